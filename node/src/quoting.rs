//! How keys and values are shown to people and read back from them.
//!
//! Keys and values are arbitrary bytes (a value may hold any bytes, spaces
//! and newlines included), but the REPL, `dsm client` and
//! `dsm log dump` print them on lines of text. [`escape`] turns bytes into a
//! single shell-like word and [`tokenize`] reads such words back, so whatever
//! `dsm log dump` or the REPL prints can be pasted into the REPL again.
//!
//! The format:
//! - a word that is non-empty valid UTF-8 without whitespace, control
//!   characters, `"`, `'` or `\` is written as-is (`hello`, `clé`);
//! - anything else is written in double quotes, with the escapes `\n \t \r
//!   \\ \" \0` and `\xHH` for each byte that is not valid UTF-8 or belongs
//!   to a control character; other characters, spaces and non-ASCII text
//!   included, stay readable: `"hello world"`, `"café\n"`, `"\xff\x01"`;
//! - when reading, single quotes take everything literally up to the next
//!   `'`, and quoted and unquoted parts touching each other form one word
//!   (`a"b c"` is `ab c`), as in a POSIX shell.
//!
//! Invariant: `tokenize(&escape(x)) == [x]` for every byte string `x`
//! (checked by the `escape_then_tokenize_round_trips` proptest).

use std::fmt::Write as _;

/// Renders `bytes` as one word that [`tokenize`] reads back as exactly
/// `bytes`. See the module documentation for the format.
pub fn escape(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.is_empty()
        && s.chars().all(is_plain)
    {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    // `utf8_chunks` yields the valid UTF-8 runs and the invalid bytes between
    // them, so non-ASCII text stays readable next to binary garbage.
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\0' => out.push_str("\\0"),
                c if c.is_control() => {
                    // Control characters (C0, DEL and the two-byte C1 range)
                    // are invisible or move the cursor: show their bytes.
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        push_hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out.push('"');
    out
}

/// True for a character that may appear in an unquoted word.
fn is_plain(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
}

fn push_hex(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

/// Why a line could not be split into words. Columns count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// A `"` or `'` was opened and never closed.
    #[error("unterminated {quote} quote opened at column {column}")]
    UnterminatedQuote {
        /// The quote character, `"` or `'`.
        quote: char,
        /// Column of the opening quote.
        column: usize,
    },
    /// A backslash inside double quotes was not followed by a known escape.
    #[error("bad escape '{found}' at column {column} (use \\n \\t \\r \\\\ \\\" \\' \\0 or \\xHH)")]
    BadEscape {
        /// What followed the backslash, as typed (empty at the end of line).
        found: String,
        /// Column of the backslash.
        column: usize,
    },
}

/// Splits a command line into words (as bytes): whitespace separates words,
/// double quotes allow the escapes of [`escape`], single quotes are literal.
///
/// Inside double quotes `\'` is accepted too (it means `'`), so people who
/// escape quotes by habit are not punished. A backslash outside quotes is
/// an ordinary character, so Windows paths and regexes can be typed plainly.
///
/// # Errors
/// [`TokenizeError`] for an unterminated quote or an unknown escape, with
/// the column to look at.
pub fn tokenize(line: &str) -> Result<Vec<Vec<u8>>, TokenizeError> {
    let mut words = Vec::new();
    let mut word: Vec<u8> = Vec::new();
    // Separate from `word.is_empty()` because `""` is a word: the empty one.
    let mut in_word = false;
    // Columns are 1-based character positions.
    let mut chars = line.chars().zip(1usize..).peekable();
    while let Some((c, column)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(('\'', _)) => break,
                        Some((c, _)) => push_char(&mut word, c),
                        None => {
                            return Err(TokenizeError::UnterminatedQuote {
                                quote: '\'',
                                column,
                            });
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(('"', _)) => break,
                        Some(('\\', esc_column)) => {
                            read_escape(&mut chars, esc_column, &mut word, column)?
                        }
                        Some((c, _)) => push_char(&mut word, c),
                        None => {
                            return Err(TokenizeError::UnterminatedQuote { quote: '"', column });
                        }
                    }
                }
            }
            c => {
                in_word = true;
                push_char(&mut word, c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Reads the escape after a backslash at `column` inside double quotes
/// opened at `quote_column`, appending the byte(s) it stands for.
fn read_escape(
    chars: &mut std::iter::Peekable<impl Iterator<Item = (char, usize)>>,
    column: usize,
    word: &mut Vec<u8>,
    quote_column: usize,
) -> Result<(), TokenizeError> {
    let Some((c, _)) = chars.next() else {
        // `"abc\` : the quote is what is really missing.
        return Err(TokenizeError::UnterminatedQuote {
            quote: '"',
            column: quote_column,
        });
    };
    let byte = match c {
        'n' => b'\n',
        't' => b'\t',
        'r' => b'\r',
        '0' => 0,
        '\\' => b'\\',
        '"' => b'"',
        '\'' => b'\'',
        'x' => {
            let hi = chars.next_if(|(c, _)| c.is_ascii_hexdigit());
            let lo = hi.and_then(|_| chars.next_if(|(c, _)| c.is_ascii_hexdigit()));
            match (hi, lo) {
                (Some((hi, _)), Some((lo, _))) => {
                    // Both are ASCII hex digits, so `to_digit` succeeds and
                    // the result fits a byte.
                    let hi = hi.to_digit(16).unwrap_or(0) as u8;
                    let lo = lo.to_digit(16).unwrap_or(0) as u8;
                    hi << 4 | lo
                }
                (hi, _) => {
                    let mut found = String::from("\\x");
                    if let Some((h, _)) = hi {
                        found.push(h);
                    }
                    if let Some(&(next, _)) = chars.peek() {
                        found.push(next);
                    }
                    return Err(TokenizeError::BadEscape { found, column });
                }
            }
        }
        other => {
            return Err(TokenizeError::BadEscape {
                found: format!("\\{other}"),
                column,
            });
        }
    };
    word.push(byte);
    Ok(())
}

fn push_char(word: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escape_table() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "hello"),
            ("clé".as_bytes(), "clé"),
            ("日本".as_bytes(), "日本"),
            (b"a=b,c", "a=b,c"),
            (b"", "\"\""),
            (b"hello world", "\"hello world\""),
            (b"line\nnext", "\"line\\nnext\""),
            (b"t\tr\r", "\"t\\tr\\r\""),
            (b"a\\b", "\"a\\\\b\""),
            (b"say \"hi\"", "\"say \\\"hi\\\"\""),
            (b"it's", "\"it's\""),
            (b"nul\0", "\"nul\\0\""),
            (b"\x01\x7f", "\"\\x01\\x7f\""),
            (b"\xff\xfe", "\"\\xff\\xfe\""),
            // Valid UTF-8 text stays readable beside an invalid byte.
            (b"caf\xc3\xa9\xff", "\"café\\xff\""),
            // U+0085 (NEL) is a C1 control character: its two bytes are shown.
            ("a\u{85}".as_bytes(), "\"a\\xc2\\x85\""),
            // Non-breaking space is whitespace: quoted, but shown as itself.
            ("a\u{a0}b".as_bytes(), "\"a\u{a0}b\""),
        ];
        for (input, want) in cases {
            assert_eq!(escape(input), *want, "escape({input:?})");
        }
    }

    #[test]
    fn tokenize_table() {
        let cases: &[(&str, &[&[u8]])] = &[
            ("", &[]),
            ("   ", &[]),
            ("WRITE a 1", &[b"WRITE", b"a", b"1"]),
            ("  read\tk  ", &[b"read", b"k"]),
            ("w k \"two words\"", &[b"w", b"k", b"two words"]),
            (
                "w k 'single \\n literal'",
                &[b"w", b"k", b"single \\n literal"],
            ),
            ("\"\"", &[b""]),
            ("''", &[b""]),
            ("a\"b c\"d", &[b"ab cd"]),
            ("\"\\n\\t\\r\\\\\\\"\\'\\0\"", &[b"\n\t\r\\\"'\0"]),
            ("\"\\xff\\x00\\x41\"", &[b"\xff\x00A"]),
            ("C:\\dir", &[b"C:\\dir"]),
            ("\"it's\"", &[b"it's"]),
            ("'say \"hi\"'", &[b"say \"hi\""]),
            ("clé", &["clé".as_bytes()]),
        ];
        for (line, want) in cases {
            let got = tokenize(line).unwrap_or_else(|e| panic!("tokenize({line:?}): {e}"));
            let want: Vec<Vec<u8>> = want.iter().map(|w| w.to_vec()).collect();
            assert_eq!(got, want, "tokenize({line:?})");
        }
    }

    #[test]
    fn tokenize_errors_name_the_column() {
        let cases: &[(&str, TokenizeError)] = &[
            (
                "write k \"abc",
                TokenizeError::UnterminatedQuote {
                    quote: '"',
                    column: 9,
                },
            ),
            (
                "x 'abc",
                TokenizeError::UnterminatedQuote {
                    quote: '\'',
                    column: 3,
                },
            ),
            (
                "\"abc\\",
                TokenizeError::UnterminatedQuote {
                    quote: '"',
                    column: 1,
                },
            ),
            (
                "\"a\\qb\"",
                TokenizeError::BadEscape {
                    found: "\\q".into(),
                    column: 3,
                },
            ),
            (
                "\"\\xg0\"",
                TokenizeError::BadEscape {
                    found: "\\xg".into(),
                    column: 2,
                },
            ),
            (
                "\"\\x4\"",
                TokenizeError::BadEscape {
                    found: "\\x4\"".into(),
                    column: 2,
                },
            ),
            // Columns count characters, not bytes.
            (
                "é \"\\z\"",
                TokenizeError::BadEscape {
                    found: "\\z".into(),
                    column: 4,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(tokenize(line).as_ref(), Err(want), "tokenize({line:?})");
        }
        let msg = tokenize("k \"open").map(|_| ()).unwrap_err().to_string();
        assert_eq!(msg, "unterminated \" quote opened at column 3");
    }

    proptest! {
        #[test]
        fn escape_then_tokenize_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let shown = escape(&bytes);
            prop_assert_eq!(tokenize(&shown), Ok(vec![bytes]));
        }

        // Bytes alone rarely form multi-byte UTF-8; strings exercise the
        // readable non-ASCII path and Unicode whitespace.
        #[test]
        fn escape_then_tokenize_round_trips_text(s in "\\PC*|[ \\t\\n\"'\\\\a-z\u{a0}\u{85}\u{2028}é]*") {
            let shown = escape(s.as_bytes());
            prop_assert_eq!(tokenize(&shown), Ok(vec![s.into_bytes()]));
        }

        #[test]
        fn tokenize_never_panics(line in "\\PC*|[ \"'\\\\xa-f0-9]*") {
            let _ = tokenize(&line);
        }
    }
}
