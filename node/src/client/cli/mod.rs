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

use dsm_wire::{env, ports};
use tokio::io::AsyncReadExt as _;

use super::render::{
    describe_change, describe_compact, describe_delete, describe_drain, describe_key, status_json,
    write_status_table,
};
use super::repl::{run_interactive, run_script};
use super::{Client, ClientConfig, ClientError, WatchOptions};
use crate::quoting::escape;
use crate::security::{ClientSecurity, ClientSecurityArgs};
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
        env = env::MASTER,
        default_value_t = format!("127.0.0.1:{}", ports::MASTER)
    )]
    pub master: String,
    /// Address of the backup master (empty for none); tried when the master
    /// does not answer.
    #[arg(
        long,
        value_name = "ADDR",
        env = env::BACKUP,
        default_value_t = format!("127.0.0.1:{}", ports::BACKUP)
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

#[cfg(test)]
mod tests;
