//! Tests of the REPL: the parser, table-driven and property-tested (it never
//! panics, whatever it prints parses back), and scripts run line by line
//! against a fake master.

use super::*;
use crate::client::tests::{active, client};

fn write(key: &[u8], value: &[u8]) -> Command {
    Command::Write {
        key: key.to_vec(),
        value: value.to_vec(),
        expect: None,
    }
}

#[test]
fn parse_table() {
    let cases: Vec<(&str, Result<Command, ParseError>)> = vec![
        ("", Ok(Command::Empty)),
        ("   \t", Ok(Command::Empty)),
        ("READ a", Ok(Command::Read { key: b"a".to_vec() })),
        ("get a", Ok(Command::Read { key: b"a".to_vec() })),
        (
            "Read \"a b\"",
            Ok(Command::Read {
                key: b"a b".to_vec(),
            }),
        ),
        ("WRITE a 1", Ok(write(b"a", b"1"))),
        ("set a 1", Ok(write(b"a", b"1"))),
        ("PUT a 1", Ok(write(b"a", b"1"))),
        ("write k \"hello world\"", Ok(write(b"k", b"hello world"))),
        ("write k 'it''s'", Ok(write(b"k", b"its"))),
        ("write \"\\x00\" \"\\xff\\n\"", Ok(write(b"\0", b"\xff\n"))),
        ("write k \"\"", Ok(write(b"k", b""))),
        ("STATUS", Ok(Command::Status)),
        ("status", Ok(Command::Status)),
        ("compact", Ok(Command::Compact)),
        (
            "DRAIN slave-2",
            Ok(Command::Drain {
                slave_id: "slave-2".into(),
            }),
        ),
        ("help", Ok(Command::Help)),
        ("HELP write", Ok(Command::Help)),
        ("exit", Ok(Command::Exit)),
        ("QUIT", Ok(Command::Exit)),
        ("FOO", Err(ParseError::Unknown("FOO".into()))),
        (
            "\"two words\" x",
            Err(ParseError::Unknown("\"two words\"".into())),
        ),
        ("READ", Err(ParseError::Usage("READ key"))),
        ("READ a b", Err(ParseError::Usage("READ key"))),
        ("WRITE a", Err(ParseError::Usage(USAGE_WRITE))),
        ("WRITE a b c", Err(ParseError::Usage(USAGE_WRITE))),
        ("WRITE a \"b c\" d", Err(ParseError::Usage(USAGE_WRITE))),
        ("WRITE a b IF", Err(ParseError::Usage(USAGE_WRITE))),
        (
            "write a b if version 3.9",
            Ok(Command::Write {
                key: b"a".to_vec(),
                value: b"b".to_vec(),
                expect: Some(Expect::Version(Version::new(3, 9))),
            }),
        ),
        (
            "WRITE a b IF ABSENT",
            Ok(Command::Write {
                key: b"a".to_vec(),
                value: b"b".to_vec(),
                expect: Some(Expect::Absent),
            }),
        ),
        (
            "DEL a",
            Ok(Command::Delete {
                key: b"a".to_vec(),
                if_version: None,
            }),
        ),
        (
            "DELETE a IF VERSION 2.1",
            Ok(Command::Delete {
                key: b"a".to_vec(),
                if_version: Some(Version::new(2, 1)),
            }),
        ),
        ("DELETE a IF ABSENT", Err(ParseError::Usage(USAGE_DELETE))),
        ("DELETE", Err(ParseError::Usage(USAGE_DELETE))),
        ("KEYS", Ok(Command::Keys { prefix: Vec::new() })),
        (
            "keys user/",
            Ok(Command::Keys {
                prefix: b"user/".to_vec(),
            }),
        ),
        (
            "WATCH user/ 3",
            Ok(Command::Watch {
                prefix: b"user/".to_vec(),
                count: Some(3),
            }),
        ),
        ("WATCH user/ 0", Err(ParseError::BadCount)),
        (
            "WATCH a 1 2",
            Err(ParseError::Usage("WATCH [prefix [count]]")),
        ),
        ("DRAIN", Err(ParseError::Usage("DRAIN slave_id"))),
        ("DRAIN \"\\xff\"", Err(ParseError::SlaveIdNotUtf8)),
        ("STATUS now", Err(ParseError::Usage("STATUS"))),
        (
            "WRITE a \"b",
            Err(ParseError::Tokenize(TokenizeError::UnterminatedQuote {
                quote: '"',
                column: 9,
            })),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), want, "parse({line:?})");
    }
}

#[test]
fn error_messages_match_the_manual() {
    let msg = |line| parse(line).map(|_| ()).unwrap_err().to_string();
    assert_eq!(msg("FOO x"), "unknown command 'FOO' (try HELP)");
    assert_eq!(
        msg("write a"),
        "usage: WRITE key value [IF VERSION v | IF ABSENT]"
    );
    assert_eq!(msg("read \"a"), "unterminated \" quote opened at column 6");
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(line in "\\PC*|[ \"'\\\\a-zA-Z0-9]*") {
        let _ = parse(&line);
    }

    #[test]
    fn written_values_parse_back(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
                                 value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32)) {
        let line = format!("WRITE {} {}", escape(&key), escape(&value));
        proptest::prop_assert_eq!(parse(&line), Ok(write(&key, &value)));
    }
}

#[tokio::test]
async fn script_runs_line_by_line() {
    let master = active(5, Some(b"hello world")).await;
    let client = client(&[&master.address]);
    let input: &[u8] = b"WRITE a 1\nREAD a\nnope\n\nHELP\nEXIT\nREAD a\n";
    let mut out = Vec::new();
    let code = run_script(&client, input, &mut out)
        .await
        .expect("script runs");
    let out = String::from_utf8(out).expect("utf-8 output");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "OK (version 5.1)");
    assert_eq!(lines[1], "\"hello world\" (version 5.1)");
    assert_eq!(lines[2], "ERR unknown command 'nope' (try HELP)");
    assert!(lines[3].starts_with("Commands"), "{out}");
    // EXIT stopped the script: the last READ did not run.
    assert_eq!(out.matches("(version").count(), 2, "{out}");
    assert_eq!(code, ExitCode::from(2));
}

#[tokio::test]
async fn script_without_errors_exits_zero() {
    let master = active(1, None).await;
    let client = client(&[&master.address]);
    let mut out = Vec::new();
    let code = run_script(&client, &b"read missing\nstatus"[..], &mut out)
        .await
        .expect("script runs");
    let out = String::from_utf8(out).expect("utf-8 output");
    assert!(out.starts_with("(not found)\n"), "{out}");
    assert!(out.contains("role"), "{out}");
    assert_eq!(code, ExitCode::SUCCESS);
}

#[tokio::test]
async fn script_rejects_non_utf8_lines_and_goes_on() {
    let master = active(1, Some(b"v")).await;
    let client = client(&[&master.address]);
    let mut out = Vec::new();
    let code = run_script(&client, &b"READ \xff\nREAD k\n"[..], &mut out)
        .await
        .expect("script runs");
    let out = String::from_utf8(out).expect("utf-8 output");
    assert!(
        out.starts_with("ERR line is not valid UTF-8 (byte 6)"),
        "{out}"
    );
    assert!(out.ends_with("v (version 1.1)\n"), "{out}");
    assert_eq!(code, ExitCode::from(2));
}
