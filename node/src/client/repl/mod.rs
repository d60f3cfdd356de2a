//! The interactive shell of `dsm client` (no subcommand), and its scripted
//! twin: with standard input not a terminal, the same commands are read line
//! by line without prompt, so `printf 'WRITE a 1\nREAD a\n' | dsm client`
//! works.
//!
//! Parsing ([`parse`]) is a pure function from a line to a [`Command`], kept
//! apart from I/O so it can be table-tested and fuzzed. Words are split with
//! [`crate::quoting::tokenize`] and values are shown with
//! [`crate::quoting::escape`], so anything printed can be pasted back.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use super::render::{
    describe_change, describe_compact, describe_delete, describe_drain, describe_key,
    write_status_table,
};
use super::{Client, WatchOptions};
use crate::quoting::{TokenizeError, escape, tokenize};
use crate::version::{Expect, Version};

/// One REPL command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `READ key` / `GET key`.
    Read {
        /// The key, as bytes.
        key: Vec<u8>,
    },
    /// `WRITE key value [IF VERSION v | IF ABSENT]` / `SET` / `PUT`.
    Write {
        /// The key, as bytes.
        key: Vec<u8>,
        /// The value, as bytes.
        value: Vec<u8>,
        /// The condition, if any.
        expect: Option<Expect>,
    },
    /// `DELETE key [IF VERSION v]` / `DEL`.
    Delete {
        /// The key, as bytes.
        key: Vec<u8>,
        /// Only if the key is at this version.
        if_version: Option<Version>,
    },
    /// `KEYS [prefix]`.
    Keys {
        /// The prefix (empty: every key).
        prefix: Vec<u8>,
    },
    /// `WATCH [prefix [count]]`.
    Watch {
        /// The prefix (empty: every key).
        prefix: Vec<u8>,
        /// Stop after this many changes (else at Ctrl-C).
        count: Option<u64>,
    },
    /// `STATUS`.
    Status,
    /// `COMPACT`.
    Compact,
    /// `DRAIN slave_id`.
    Drain {
        /// Id of the slave to empty.
        slave_id: String,
    },
    /// `HELP`.
    Help,
    /// `EXIT` / `QUIT`.
    Exit,
    /// A blank line: nothing to do.
    Empty,
}

/// Why a line is not a command. `Display` is what follows `ERR `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Quotes or escapes are wrong.
    #[error("{0}")]
    Tokenize(#[from] TokenizeError),
    /// The first word is no command (shown escaped, as typed).
    #[error("unknown command '{0}' (try HELP)")]
    Unknown(String),
    /// Wrong number of arguments; holds the usage line.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// A slave id must be text (it is a string in the protocol).
    #[error("slave id must be valid UTF-8")]
    SlaveIdNotUtf8,
    /// A version that is not `EPOCH.SEQ`.
    #[error("{0}")]
    BadVersion(String),
    /// A count that is not a positive number.
    #[error("the count must be a positive number")]
    BadCount,
}

const USAGE_READ: &str = "READ key";
const USAGE_WRITE: &str = "WRITE key value [IF VERSION v | IF ABSENT]";
const USAGE_DELETE: &str = "DELETE key [IF VERSION v]";
const USAGE_DRAIN: &str = "DRAIN slave_id";

/// Text printed by `HELP`.
pub const HELP: &str = "\
Commands (case-insensitive):
  READ key           show the value of key (alias: GET)
  WRITE key value    store value under key (aliases: SET, PUT)
  WRITE key value IF VERSION v   only if key is at version v (e.g. 1.7)
  WRITE key value IF ABSENT      only if key does not exist
  DELETE key         remove key (alias: DEL); DELETE key IF VERSION v
  KEYS [prefix]      list the keys starting with prefix, with versions
  WATCH [prefix [n]] print changes of keys starting with prefix as they
                     happen (n of them, or until Ctrl-C)
  STATUS             show the cluster: role, epoch, slaves, replication
  COMPACT            compact the write-ahead log now
  DRAIN slave_id     move every key off a slave before removing it
  HELP               this text
  EXIT               leave (alias: QUIT, or Ctrl-D)
Words are separated by spaces. Use double quotes for spaces and escapes
(\"two words\", \"line\\n\", \"\\x00\\xff\") or single quotes for literal text.";

/// Parses one line into a [`Command`]. Never panics, whatever the input.
///
/// # Errors
/// [`ParseError`] for bad quoting, unknown commands and wrong arity.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let words = tokenize(line)?;
    let Some((name, args)) = words.split_first() else {
        return Ok(Command::Empty);
    };
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    // Clone out of the slice only once the arity is known to be right.
    let command = match (upper.as_str(), args) {
        ("READ" | "GET", [key]) => Command::Read { key: key.clone() },
        ("READ" | "GET", _) => return Err(ParseError::Usage(USAGE_READ)),
        ("WRITE" | "SET" | "PUT", [key, value, condition @ ..]) => Command::Write {
            key: key.clone(),
            value: value.clone(),
            expect: parse_condition(condition, true, USAGE_WRITE)?,
        },
        ("WRITE" | "SET" | "PUT", _) => return Err(ParseError::Usage(USAGE_WRITE)),
        ("DELETE" | "DEL", [key, condition @ ..]) => Command::Delete {
            key: key.clone(),
            if_version: match parse_condition(condition, false, USAGE_DELETE)? {
                Some(Expect::Version(v)) => Some(v),
                _ => None,
            },
        },
        ("DELETE" | "DEL", _) => return Err(ParseError::Usage(USAGE_DELETE)),
        ("KEYS", []) => Command::Keys { prefix: Vec::new() },
        ("KEYS", [prefix]) => Command::Keys {
            prefix: prefix.clone(),
        },
        ("KEYS", _) => return Err(ParseError::Usage("KEYS [prefix]")),
        ("WATCH", []) => Command::Watch {
            prefix: Vec::new(),
            count: None,
        },
        ("WATCH", [prefix]) => Command::Watch {
            prefix: prefix.clone(),
            count: None,
        },
        ("WATCH", [prefix, count]) => Command::Watch {
            prefix: prefix.clone(),
            count: Some(
                std::str::from_utf8(count)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .filter(|c| *c > 0)
                    .ok_or(ParseError::BadCount)?,
            ),
        },
        ("WATCH", _) => return Err(ParseError::Usage("WATCH [prefix [count]]")),
        ("DRAIN", [id]) => Command::Drain {
            slave_id: String::from_utf8(id.clone()).map_err(|_| ParseError::SlaveIdNotUtf8)?,
        },
        ("DRAIN", _) => return Err(ParseError::Usage(USAGE_DRAIN)),
        ("STATUS", []) => Command::Status,
        ("COMPACT", []) => Command::Compact,
        ("HELP" | "?", _) => Command::Help,
        ("EXIT" | "QUIT", []) => Command::Exit,
        ("STATUS", _) => return Err(ParseError::Usage("STATUS")),
        ("COMPACT", _) => return Err(ParseError::Usage("COMPACT")),
        ("EXIT" | "QUIT", _) => return Err(ParseError::Usage("EXIT")),
        _ => return Err(ParseError::Unknown(escape(name))),
    };
    Ok(command)
}

/// The optional `IF VERSION v` / `IF ABSENT` after a WRITE or DELETE.
fn parse_condition(
    words: &[Vec<u8>],
    absent_allowed: bool,
    usage: &'static str,
) -> Result<Option<Expect>, ParseError> {
    let upper: Vec<String> = words
        .iter()
        .map(|w| String::from_utf8_lossy(w).to_ascii_uppercase())
        .collect();
    match upper.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Ok(None),
        ["IF", "ABSENT"] if absent_allowed => Ok(Some(Expect::Absent)),
        ["IF", "VERSION", _] => {
            let text = String::from_utf8_lossy(&words[2]);
            text.parse::<Version>()
                .map(|v| Some(Expect::Version(v)))
                .map_err(ParseError::BadVersion)
        }
        _ => Err(ParseError::Usage(usage)),
    }
}

/// What happened to one line, for the exit code of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (a missing key counts as done: `(not found)` is an answer).
    Ok,
    /// An `ERR` line was printed.
    Failed,
    /// `EXIT` / `QUIT`.
    Exit,
}

/// Parses and runs one line, writing its output (`OK (version E.S)`, a value,
/// `(not found)`, `ERR …`) to `out`.
///
/// # Errors
/// Only when writing to `out` fails.
pub async fn execute_line(
    client: &Client,
    line: &str,
    out: &mut impl Write,
) -> std::io::Result<Outcome> {
    let command = match parse(line) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "ERR {e}")?;
            return Ok(Outcome::Failed);
        }
    };
    let result = match command {
        Command::Empty => return Ok(Outcome::Ok),
        Command::Exit => return Ok(Outcome::Exit),
        Command::Help => {
            writeln!(out, "{HELP}")?;
            return Ok(Outcome::Ok);
        }
        Command::Read { key } => client.read(&key).await.map(|found| match found {
            Some((value, version)) => format!("{} (version {version})", escape(&value)),
            None => "(not found)".to_owned(),
        }),
        Command::Write { key, value, expect } => match expect {
            Some(expect) => client.write_if(&key, &value, expect).await,
            None => client.write(&key, &value).await,
        }
        .map(|version| format!("OK (version {version})")),
        Command::Delete { key, if_version } => match if_version {
            Some(v) => client.delete_if(&key, v).await,
            None => client.delete(&key).await,
        }
        .map(describe_delete),
        Command::Keys { prefix } => list_all(client, &prefix).await,
        Command::Watch { prefix, count } => return watch(client, prefix, count, out).await,
        Command::Status => client.status().await.map(|s| {
            let mut table = Vec::new();
            // Writing into a Vec cannot fail.
            let _ = write_status_table(&mut table, &s);
            String::from_utf8_lossy(&table).trim_end().to_owned()
        }),
        Command::Compact => client
            .compact()
            .await
            .map(|r| format!("OK ({})", describe_compact(&r))),
        Command::Drain { slave_id } => client
            .drain(&slave_id)
            .await
            .map(|r| format!("OK ({})", describe_drain(&slave_id, &r))),
    };
    match result {
        Ok(text) => {
            writeln!(out, "{text}")?;
            Ok(Outcome::Ok)
        }
        Err(e) => {
            writeln!(out, "ERR {e}")?;
            Ok(Outcome::Failed)
        }
    }
}

/// Every key starting with `prefix`, one per line with its version (page by
/// page; `(no keys)` when there is none).
async fn list_all(client: &Client, prefix: &[u8]) -> Result<String, super::ClientError> {
    let mut lines = Vec::new();
    let mut after: Option<bytes::Bytes> = None;
    loop {
        let page = client.list(prefix, after.as_deref(), 0, true).await?;
        lines.extend(page.keys.iter().map(|(k, v)| describe_key(k, *v)));
        match page.next {
            Some(next) => after = Some(next),
            None if lines.is_empty() => return Ok("(no keys)".to_string()),
            None => return Ok(lines.join("\n")),
        }
    }
}

/// `WATCH`: prints changes as they come, until `count` of them or Ctrl-C.
async fn watch(
    client: &Client,
    prefix: Vec<u8>,
    count: Option<u64>,
    out: &mut impl Write,
) -> std::io::Result<Outcome> {
    let options = WatchOptions {
        prefix: prefix.into(),
        values: true,
        ..WatchOptions::default()
    };
    let mut watch = match client.watch(options).await {
        Ok(watch) => watch,
        Err(e) => {
            writeln!(out, "ERR {e}")?;
            return Ok(Outcome::Failed);
        }
    };
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let change = tokio::select! {
            change = watch.next() => change,
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Ok),
        };
        match change {
            Ok(change) => writeln!(out, "{}", describe_change(&change, true))?,
            Err(e) => {
                writeln!(out, "ERR {e}")?;
                return Ok(Outcome::Failed);
            }
        }
        out.flush()?;
        seen += 1;
    }
    Ok(Outcome::Ok)
}

/// Runs commands read line by line from `input` (standard input that is not
/// a terminal), without prompt. Stops at end of input or `EXIT`.
///
/// Returns exit code 0 when every line succeeded, 2 when any printed `ERR`
/// (the following lines still run, as in the interactive shell).
///
/// # Errors
/// When reading `input` or writing `out` fails.
pub async fn run_script(
    client: &Client,
    mut input: impl AsyncBufRead + Unpin,
    out: &mut impl Write,
) -> std::io::Result<ExitCode> {
    let mut failed = false;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw).await? == 0 {
            break;
        }
        // Lines are text; quoted escapes carry binary data.
        let outcome = match std::str::from_utf8(&raw) {
            Ok(line) => execute_line(client, line, out).await?,
            Err(e) => {
                writeln!(
                    out,
                    "ERR line is not valid UTF-8 (byte {}); use \"\\xHH\" escapes for binary data",
                    e.valid_up_to() + 1
                )?;
                Outcome::Failed
            }
        };
        out.flush()?;
        match outcome {
            Outcome::Ok => {}
            Outcome::Failed => failed = true,
            Outcome::Exit => break,
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where the history lives: `$HOME/.dsm_history`, or nowhere without `HOME`.
fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".dsm_history"))
}

/// The interactive shell on a terminal: line editing, history, a prompt
/// naming the endpoint believed active. Runs until `EXIT` or Ctrl-D.
///
/// Rustyline blocks its thread, so the shell runs on a blocking thread and
/// enters the runtime for each call (`Handle::block_on`).
///
/// # Errors
/// When the terminal cannot be set up.
pub async fn run_interactive(client: std::sync::Arc<Client>) -> anyhow::Result<ExitCode> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || interactive_loop(&handle, &client)).await?
}

fn interactive_loop(handle: &tokio::runtime::Handle, client: &Client) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(path);
    }
    println!(
        "Connected to {} (type HELP for commands).",
        client.endpoints().join(", ")
    );
    let stdout = std::io::stdout();
    loop {
        let prompt = format!("dsm {}> ", client.active_endpoint());
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let mut out = stdout.lock();
                // Ctrl-C during a call (which may retry for `--retry-for`)
                // abandons the call, not the shell. While rustyline reads a
                // line the terminal is raw, so Ctrl-C arrives as a key there.
                let outcome = handle.block_on(async {
                    tokio::select! {
                        outcome = execute_line(client, &line, &mut out) => outcome.map(Some),
                        _ = tokio::signal::ctrl_c() => Ok(None),
                    }
                })?;
                match outcome {
                    Some(Outcome::Exit) => break,
                    Some(_) => {}
                    None => writeln!(out, "(interrupted)")?,
                }
            }
            // Ctrl-C abandons the current line, like a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        // Not writable (read-only home in a pod): history is a convenience.
        let _ = editor.save_history(path);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
