//! `dsm client`: flags, one-shot subcommands, and the entry point [`run`]
//! that the `dsm` binary calls. Without a subcommand it starts the REPL
//! ([`super::repl`]).
//!
//! Exit codes (also in `--help`): 0 done / key found, 1 key not found,
//! 2 error (clap's usage errors are 2 as well), 3 a condition (`--if-version`,
//! `--if-absent`) did not hold.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

use super::repl::{run_interactive, run_script};
use super::{Change, Client, ClientConfig, ClientError, WatchOptions};
use crate::proto;
use crate::security::{ClientSecurity, ClientSecurityArgs};
use crate::quoting::escape;
use crate::version::{Expect, Version};

const EXIT_CODES: &str = "\
Exit codes:
  0  done (for read: the key was found)
  1  read: the key was not found
  2  error: bad usage, no master reachable, or the request was refused
  3  write/delete with --if-version or --if-absent: the condition did not
     hold, and nothing was changed

Without a subcommand, starts an interactive shell (type HELP there). When
standard input is not a terminal, commands are read from it line by line:
  printf 'WRITE a 1\\nREAD a\\n' | dsm client
and the exit code is 2 if any line printed ERR.";

/// Exit code for "the key was not found".
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code for every error, like clap's usage errors.
const EXIT_ERROR: u8 = 2;
/// Exit code for a condition that did not hold.
const EXIT_CONDITION_FAILED: u8 = 3;

/// Flags of `dsm client`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = EXIT_CODES)]
pub struct ClientArgs {
    /// Where the cluster is and how to reach it.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// One-shot command; without one, the interactive shell starts.
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

/// How a client reaches the cluster (`dsm client`, `dsm snapshot save`).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Address of the master.
    #[arg(
        long,
        value_name = "ADDR",
        env = "DSM_MASTER",
        default_value = "127.0.0.1:12345"
    )]
    pub master: String,
    /// Address of the backup master (empty for none); tried when the master
    /// does not answer.
    #[arg(
        long,
        value_name = "ADDR",
        env = "DSM_BACKUP",
        default_value = "127.0.0.1:12346"
    )]
    pub backup: String,
    /// Limit for one attempt against one address (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How long to keep retrying while no master answers (e.g. 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// TLS and token settings.
    #[command(flatten)]
    pub security: ClientSecurityArgs,
}

/// One-shot subcommands of `dsm client`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// Store VALUE under KEY and print the version it got.
    ///
    /// KEY and VALUE are taken byte for byte; put `--` before them if they
    /// start with `-`. With --if-version or --if-absent the WRITE is a
    /// compare-and-set: it applies only if the key is in that state, and
    /// otherwise exits with code 3, printing the key's current version.
    Write {
        /// The key (raw bytes of the argument).
        key: OsString,
        /// The value (raw bytes of the argument).
        #[arg(required_unless_present = "value_file")]
        value: Option<OsString>,
        /// Read the value from PATH instead (`-` for standard input), for
        /// binary values.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// Only if the key's latest version is this one (as printed: 2.17).
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_version: Option<Version>,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Delete KEY (READ then answers not found). Deleting a key that does
    /// not exist is not an error: it prints that nothing was deleted.
    Delete {
        /// The key (raw bytes of the argument).
        key: OsString,
        /// Only if the key's latest version is this one (exit code 3
        /// otherwise).
        #[arg(long, value_name = "VERSION")]
        if_version: Option<Version>,
    },
    /// List the keys starting with PREFIX (every key without one), in key
    /// order, one per line (escaped as the shell shows them).
    Keys {
        /// The prefix (raw bytes of the argument).
        #[arg(default_value = "")]
        prefix: OsString,
        /// Print each key's version after it.
        #[arg(long)]
        versions: bool,
        /// Stop after this many keys [default: all of them].
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Print every change (WRITE, DELETE) of the keys starting with PREFIX as
    /// it happens, one per line, until interrupted. Resumes by itself across
    /// failovers, with nothing missed or repeated.
    Watch {
        /// The prefix (raw bytes of the argument); empty: every key.
        #[arg(default_value = "")]
        prefix: OsString,
        /// Only the key equal to PREFIX.
        #[arg(long)]
        exact: bool,
        /// Start at this log position (a seq, as the last number of a
        /// version) instead of now: to resume a previous watch, pass the
        /// last seq it printed plus one.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Print the values of WRITEs too.
        #[arg(long)]
        values: bool,
        /// Stop after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print the value of KEY followed by a newline (exit code 1 when the key
    /// does not exist).
    Read {
        /// The key (raw bytes of the argument).
        key: OsString,
        /// Print the value quoted and escaped, as the shell shows it, instead
        /// of its raw bytes.
        #[arg(long)]
        escaped: bool,
    },
    /// Show the cluster: role, epoch, leader, keys, replication, slaves.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compact the write-ahead log now (normally automatic).
    Compact,
    /// Move every key off a slave and stop placing writes on it.
    Drain {
        /// Id of the slave, as shown by `status`.
        slave_id: String,
    },
}

/// The failover client `args` describe (addresses, timeouts, TLS, token).
///
/// # Errors
/// A bad address or unreadable TLS files, named.
pub fn connect(args: &ConnectArgs) -> anyhow::Result<Client> {
    let config = ClientConfig {
        endpoints: vec![args.master.clone(), args.backup.clone()],
        timeout: args.timeout,
        retry_for: args.retry_for,
    };
    let security = ClientSecurity::from_args(&args.security)?;
    Ok(Client::try_with_security(config, security)?)
}

/// Runs `dsm client`. Every expected failure (bad address, no master, a
/// refused request, unreadable value file) is reported on standard error
/// and turned into exit code 2; see the module documentation for the codes.
///
/// # Errors
/// Only when standard output cannot be written or the terminal cannot be
/// set up; the caller should print it and exit with code 2.
pub async fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let client = match connect(&args.connect) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dsm client: {e:#}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    match args.command {
        Some(command) => {
            let mut stdout = std::io::stdout();
            let code = run_command(&client, command, &mut stdout, &mut std::io::stderr()).await?;
            stdout.flush()?;
            Ok(code)
        }
        None if std::io::stdin().is_terminal() => run_interactive(Arc::new(client)).await,
        None => {
            let input = tokio::io::BufReader::new(tokio::io::stdin());
            Ok(run_script(&client, input, &mut std::io::stdout()).await?)
        }
    }
}

/// Runs one subcommand, writing results to `out` and errors to `err`.
///
/// # Errors
/// Only when writing to `out` or `err` fails.
pub async fn run_command(
    client: &Client,
    command: ClientCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<ExitCode> {
    let result: Result<(), Failure> = match command {
        ClientCommand::Write {
            key,
            value,
            value_file,
            if_version,
            if_absent,
        } => match load_value(value, value_file).await {
            Ok(value) => {
                let key = os_bytes(key);
                let expect = match (if_version, if_absent) {
                    (Some(v), _) => Some(Expect::Version(v)),
                    (None, true) => Some(Expect::Absent),
                    (None, false) => None,
                };
                let written = match expect {
                    Some(expect) => client.write_if(&key, &value, expect).await,
                    None => client.write(&key, &value).await,
                };
                match written {
                    Ok(version) => writeln!(out, "OK (version {version})").map_err(Failure::Io),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(Failure::Message(e)),
        },
        ClientCommand::Delete { key, if_version } => {
            let key = os_bytes(key);
            let deleted = match if_version {
                Some(v) => client.delete_if(&key, v).await,
                None => client.delete(&key).await,
            };
            match deleted {
                Ok(found) => writeln!(out, "{}", describe_delete(found)).map_err(Failure::Io),
                Err(e) => Err(e.into()),
            }
        }
        ClientCommand::Keys {
            prefix,
            versions,
            limit,
        } => list_keys(client, &os_bytes(prefix), versions, limit, out).await,
        ClientCommand::Watch {
            prefix,
            exact,
            from,
            values,
            count,
        } => {
            let options = WatchOptions {
                prefix: os_bytes(prefix).into(),
                exact,
                from_seq: from.unwrap_or(0),
                values,
            };
            watch_changes(client, options, count, out).await
        }
        ClientCommand::Read { key, escaped } => {
            let key = os_bytes(key);
            match client.read(&key).await {
                Ok(Some((value, _version))) => if escaped {
                    writeln!(out, "{}", escape(&value))
                } else {
                    out.write_all(&value).and_then(|()| out.write_all(b"\n"))
                }
                .map_err(Failure::Io),
                Ok(None) => {
                    writeln!(err, "dsm client: key {} not found", escape(&key))?;
                    return Ok(ExitCode::from(EXIT_NOT_FOUND));
                }
                Err(e) => Err(e.into()),
            }
        }
        ClientCommand::Status { json } => match client.status().await {
            Ok(status) if json => writeln!(out, "{:#}", status_json(&status)).map_err(Failure::Io),
            Ok(status) => write_status_table(out, &status).map_err(Failure::Io),
            Err(e) => Err(e.into()),
        },
        ClientCommand::Compact => match client.compact().await {
            Ok(reply) => writeln!(out, "OK ({})", describe_compact(&reply)).map_err(Failure::Io),
            Err(e) => Err(e.into()),
        },
        ClientCommand::Drain { slave_id } => match client.drain(&slave_id).await {
            Ok(reply) => {
                writeln!(out, "OK ({})", describe_drain(&slave_id, &reply)).map_err(Failure::Io)
            }
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Io(e)) => Err(e),
        Err(Failure::Condition(message)) => {
            writeln!(err, "dsm client: {message}")?;
            Ok(ExitCode::from(EXIT_CONDITION_FAILED))
        }
        Err(Failure::Message(message)) => {
            writeln!(err, "dsm client: {message}")?;
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

/// A subcommand's failure: a message for the user, a condition that did not
/// hold, or broken output.
enum Failure {
    Message(String),
    Condition(String),
    Io(std::io::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            e @ ClientError::ConditionFailed { .. } => Failure::Condition(e.to_string()),
            e => Failure::Message(e.to_string()),
        }
    }
}

/// One line describing a DELETE's effect.
pub fn describe_delete(deleted: Option<Version>) -> String {
    match deleted {
        Some(version) => format!("OK (deleted, version {version})"),
        None => "OK (nothing to delete: the key does not exist)".to_string(),
    }
}

/// One line per key: the key escaped, and its version when asked for.
pub fn describe_key(key: &[u8], version: Option<Version>) -> String {
    match version {
        Some(v) => format!("{} (version {v})", escape(key)),
        None => escape(key),
    }
}

/// One line per change of a watch.
pub fn describe_change(change: &Change, values: bool) -> String {
    if change.deleted {
        format!("{} DELETE {}", change.version, escape(&change.key))
    } else if values {
        format!(
            "{} WRITE {} {}",
            change.version,
            escape(&change.key),
            escape(&change.value)
        )
    } else {
        format!("{} WRITE {}", change.version, escape(&change.key))
    }
}

/// `keys`: every page of a LIST, printed as it comes (memory bounded by a
/// page).
async fn list_keys(
    client: &Client,
    prefix: &[u8],
    versions: bool,
    limit: Option<u64>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut after: Option<bytes::Bytes> = None;
    let mut printed = 0u64;
    loop {
        let page = client
            .list(prefix, after.as_deref(), 0, versions)
            .await
            .map_err(Failure::from)?;
        for (key, version) in &page.keys {
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
            writeln!(out, "{}", describe_key(key, *version)).map_err(Failure::Io)?;
            printed += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

/// `watch`: prints changes until `count` or Ctrl-C.
async fn watch_changes(
    client: &Client,
    options: WatchOptions,
    count: Option<u64>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let values = options.values;
    let mut watch = client.watch(options).await.map_err(Failure::from)?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let change = tokio::select! {
            change = watch.next() => change.map_err(Failure::from)?,
            _ = crate::local::shutdown_signal() => return Ok(()),
        };
        writeln!(out, "{}", describe_change(&change, values)).map_err(Failure::Io)?;
        out.flush().map_err(Failure::Io)?;
        seen += 1;
    }
    Ok(())
}

/// The value of `write`: the argument, or the file's bytes (`-`: stdin).
async fn load_value(value: Option<OsString>, file: Option<PathBuf>) -> Result<Vec<u8>, String> {
    match (value, file) {
        (Some(value), _) => Ok(os_bytes(value)),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| format!("cannot read the value from standard input: {e}"))?;
            Ok(bytes)
        }
        (None, Some(path)) => tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read the value file {}: {e}", path.display())),
        // clap's `required_unless_present` makes this unreachable from the
        // command line; a programmatic caller gets a message, not a panic.
        (None, None) => Err("write needs a VALUE or --value-file PATH".to_owned()),
    }
}

/// The raw bytes of a command-line argument: keys and values are bytes,
/// not text, and Unix hands them over as such.
#[cfg(unix)]
fn os_bytes(s: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt as _;
    s.into_vec()
}

/// Elsewhere arguments are UTF-16; non-Unicode ones are rare enough that a
/// lossy conversion is acceptable.
#[cfg(not(unix))]
fn os_bytes(s: OsString) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

/// One line describing a compaction's effect.
pub fn describe_compact(reply: &proto::CompactReply) -> String {
    format!(
        "{} segment(s), {} bytes -> {} segment(s), {} bytes",
        reply.segments_before, reply.bytes_before, reply.segments_after, reply.bytes_after
    )
}

/// One line describing a drain's effect.
pub fn describe_drain(slave_id: &str, reply: &proto::DrainReply) -> String {
    format!("drained {slave_id}: moved {} key(s)", reply.moved_keys)
}

/// Writes the human-readable status: the master's view, then one row per
/// slave.
///
/// # Errors
/// When writing to `out` fails.
pub fn write_status_table(out: &mut impl Write, s: &proto::StatusReply) -> std::io::Result<()> {
    let or_unknown = |a: &str| {
        if a.is_empty() {
            "(unknown)".to_owned()
        } else {
            a.to_owned()
        }
    };
    let fields = [
        ("role", s.role.clone()),
        ("address", or_unknown(&s.address)),
        ("epoch", s.epoch.to_string()),
        ("leader", or_unknown(&s.leader)),
        ("keys", s.keys.to_string()),
        ("under-replicated keys", s.under_replicated_keys.to_string()),
        (
            "replication",
            format!(
                "{} of {} configured slaves per write",
                s.replication_factor, s.configured_slaves
            ),
        ),
        ("log end seq", s.log_end_seq.to_string()),
    ];
    for (name, value) in fields {
        writeln!(out, "{:<22} {value}", format!("{name}:"))?;
    }
    if s.slaves.is_empty() {
        return writeln!(out, "\nno slaves registered");
    }
    let header = ["SLAVE", "ADDRESS", "LIVE", "KEYS", "READS", "WRITES"];
    let rows: Vec<[String; 6]> = s
        .slaves
        .iter()
        .map(|slave| {
            let live = match (slave.live, slave.draining) {
                (true, false) => "yes",
                (true, true) => "yes (draining)",
                (false, false) => "no",
                (false, true) => "no (draining)",
            };
            [
                slave.id.clone(),
                slave.address.clone(),
                live.to_owned(),
                slave.keys.to_string(),
                slave.reads.to_string(),
                slave.writes.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    writeln!(out)?;
    let print_row = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            // Numbers are right-aligned so their magnitudes line up.
            .map(|(i, (cell, w))| {
                if i >= 3 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())
    };
    print_row(out, &header)?;
    for row in &rows {
        print_row(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// The status as JSON, field names as in `proto/dsm.proto`.
pub fn status_json(s: &proto::StatusReply) -> serde_json::Value {
    let slaves: Vec<serde_json::Value> = s
        .slaves
        .iter()
        .map(|slave| {
            serde_json::json!({
                "id": slave.id,
                "address": slave.address,
                "live": slave.live,
                "draining": slave.draining,
                "keys": slave.keys,
                "reads": slave.reads,
                "writes": slave.writes,
            })
        })
        .collect();
    serde_json::json!({
        "role": s.role,
        "address": s.address,
        "epoch": s.epoch,
        "leader": s.leader,
        "keys": s.keys,
        "under_replicated_keys": s.under_replicated_keys,
        "replication_factor": s.replication_factor,
        "configured_slaves": s.configured_slaves,
        "log_end_seq": s.log_end_seq,
        "slaves": slaves,
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn status_table_lists_slaves() {
        let status = proto::StatusReply {
            role: "active".into(),
            epoch: 3,
            leader: "10.0.0.1:12345".into(),
            keys: 1000,
            replication_factor: 2,
            configured_slaves: 3,
            under_replicated_keys: 4,
            slaves: vec![
                proto::SlaveStatus {
                    id: "slave-0".into(),
                    address: "10.0.0.5:7000".into(),
                    live: true,
                    keys: 700,
                    reads: 12,
                    writes: 3456,
                    draining: false,
                },
                proto::SlaveStatus {
                    id: "slave-1".into(),
                    address: "10.0.0.6:7000".into(),
                    live: false,
                    keys: 300,
                    reads: 0,
                    writes: 1,
                    draining: true,
                },
            ],
            log_end_seq: 5000,
            address: "10.0.0.1:12345".into(),
        };
        let mut out = Vec::new();
        write_status_table(&mut out, &status).expect("in-memory output");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.contains("role:                  active\n"), "{out}");
        assert!(out.contains("under-replicated keys: 4\n"), "{out}");
        assert!(
            out.contains("replication:           2 of 3 configured slaves per write"),
            "{out}"
        );
        assert!(
            out.contains("SLAVE    ADDRESS        LIVE           KEYS  READS  WRITES\n"),
            "{out}"
        );
        assert!(
            out.contains("slave-0  10.0.0.5:7000  yes             700     12    3456\n"),
            "{out}"
        );
        assert!(
            out.contains("slave-1  10.0.0.6:7000  no (draining)   300      0       1\n"),
            "{out}"
        );

        let json = status_json(&status);
        assert_eq!(json["slaves"][1]["draining"], true);
        assert_eq!(json["under_replicated_keys"], 4);
    }
}
