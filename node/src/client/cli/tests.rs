//! Tests of `dsm client`: the clap definition (flags, subcommands, usage
//! errors, the exit codes in `--help`) and one-shot commands against a fake
//! master (raw and escaped output, exit codes).

use super::*;
use crate::client::tests::{active, client};
use clap::{CommandFactory as _, Parser};

/// The shape the `dsm` binary is expected to use.
#[derive(Parser, Debug)]
struct Dsm {
    #[command(subcommand)]
    command: Top,
}

#[derive(clap::Subcommand, Debug)]
enum Top {
    /// Talk to the cluster.
    Client(ClientArgs),
}

fn parse(args: &[&str]) -> Result<ClientArgs, clap::Error> {
    let Top::Client(args) = Dsm::try_parse_from(args)?.command;
    Ok(args)
}

#[test]
fn clap_definition_is_valid() {
    Dsm::command().debug_assert();
}

#[test]
fn help_documents_exit_codes() {
    let mut command = Dsm::command();
    let help = command
        .find_subcommand_mut("client")
        .expect("client subcommand")
        .render_long_help()
        .to_string();
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("1  read: the key was not found"), "{help}");
}

#[test]
fn flags_and_subcommands_parse() {
    // Not parsed with env vars: the defaults may be overridden by the
    // environment of whoever runs the tests, so only explicit flags are
    // checked here.
    let args = parse(&[
        "dsm",
        "client",
        "--master",
        "m:1",
        "--backup",
        "",
        "--timeout",
        "500ms",
        "--retry-for",
        "1m",
        "read",
        "--escaped",
        "--",
        "-k",
    ])
    .expect("parses");
    assert_eq!(args.connect.master, "m:1");
    assert_eq!(args.connect.backup, "");
    assert_eq!(args.connect.timeout, Duration::from_millis(500));
    assert_eq!(args.connect.retry_for, Duration::from_secs(60));
    assert_eq!(
        args.command,
        Some(ClientCommand::Read {
            key: "-k".into(),
            escaped: true
        })
    );

    let args = parse(&["dsm", "client", "write", "k", "--value-file", "-"]).expect("parses");
    assert_eq!(
        args.command,
        Some(ClientCommand::Write {
            key: "k".into(),
            value: None,
            value_file: Some("-".into()),
            if_version: None,
            if_absent: false,
        })
    );
    assert!(parse(&["dsm", "client"]).expect("parses").command.is_none());
}

#[test]
fn usage_errors_are_clap_errors() {
    for bad in [
        &["dsm", "client", "write", "k"][..],
        &["dsm", "client", "write", "k", "v", "--value-file", "f"],
        &["dsm", "client", "--timeout", "soon", "status"],
        &["dsm", "client", "read"],
        &["dsm", "client", "frobnicate"],
    ] {
        let err = parse(bad).expect_err("must be rejected");
        assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
    }
}

async fn one_shot(client: &Client, command: ClientCommand) -> (ExitCode, Vec<u8>, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_command(client, command, &mut out, &mut err)
        .await
        .expect("in-memory output");
    (code, out, String::from_utf8_lossy(&err).into_owned())
}

#[tokio::test]
async fn read_prints_raw_bytes_or_escaped() {
    let master = active(2, Some(b"a b\n\xff")).await;
    let client = client(&[&master.address]);
    let read = |escaped| ClientCommand::Read {
        key: "k".into(),
        escaped,
    };
    let (code, out, _) = one_shot(&client, read(false)).await;
    assert_eq!(
        (code, out.as_slice()),
        (ExitCode::SUCCESS, &b"a b\n\xff\n"[..])
    );
    let (code, out, _) = one_shot(&client, read(true)).await;
    assert_eq!(
        (code, out.as_slice()),
        (ExitCode::SUCCESS, &b"\"a b\\n\\xff\"\n"[..])
    );
}

#[tokio::test]
async fn exit_codes_for_not_found_and_errors() {
    let master = active(2, None).await;
    let client = client(&[&master.address]);
    let (code, out, err) = one_shot(
        &client,
        ClientCommand::Read {
            key: "missing key".into(),
            escaped: false,
        },
    )
    .await;
    assert_eq!(code, ExitCode::from(1));
    assert!(out.is_empty());
    assert_eq!(err, "dsm client: key \"missing key\" not found\n");

    let (code, _, err) = one_shot(
        &client,
        ClientCommand::Write {
            key: "k".into(),
            value: None,
            value_file: Some("/nonexistent/value".into()),
            if_version: None,
            if_absent: false,
        },
    )
    .await;
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("cannot read the value file /nonexistent/value"),
        "{err}"
    );

    let (code, out, _) = one_shot(
        &client,
        ClientCommand::Write {
            key: "k".into(),
            value: Some("v".into()),
            value_file: None,
            if_version: None,
            if_absent: false,
        },
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(out, b"OK (version 2.1)\n");
}
