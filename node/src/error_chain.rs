//! An error in one line: its message followed by its causes (the `source()`
//! chain). tonic's and hyper's errors say little at the top ("transport
//! error"); what went wrong ("Connection refused") is several causes down.

use std::error::Error;

/// The causes of `error`, nearest first (`error` itself not included).
pub fn causes<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(error.source(), |&cause| cause.source())
}

/// `message` followed by the causes of `error`, joined with `": "`, so
/// "tcp connect error" becomes "tcp connect error: Connection refused (os
/// error 111)". A cause whose words the line already holds is left out (tonic
/// and hyper often repeat their cause in their own message), and so is
/// hyper's bare "transport error", which adds words but no information.
pub fn describe(message: &str, error: &(dyn Error + 'static)) -> String {
    let mut text = message.to_owned();
    for cause in causes(error) {
        let part = cause.to_string();
        if part == "transport error" || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// `error`'s own message followed by its causes, as [`describe`] joins them.
pub fn full_message(error: &(dyn Error + 'static)) -> String {
    describe(&error.to_string(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and at most one cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|cause| cause as &(dyn Error + 'static))
        }
    }

    fn chain(messages: &[&'static str]) -> Layer {
        let mut layers = messages.iter().rev();
        let innermost = Layer(layers.next().expect("one message at least"), None);
        layers.fold(innermost, |cause, message| {
            Layer(message, Some(Box::new(cause)))
        })
    }

    #[test]
    fn causes_follow_the_message_without_repeats() {
        let error = chain(&[
            "error trying to connect",
            "transport error",
            "tcp connect error",
            "connect",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(causes(&error).count(), 4);
        assert_eq!(
            describe("error trying to connect", &error),
            "error trying to connect: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(describe("", &chain(&["top", "cause"])), "cause");
        assert_eq!(full_message(&chain(&["top", "cause"])), "top: cause");
    }
}
