//! `dsm log dump`: the write-ahead log for people, one `WRITE key value`
//! line per valid record in log order, and `DELETE key` for a deletion.
//! Keys and values that are not plain text are quoted and escaped with
//! [`crate::quoting::escape`], so every line is one record whatever it holds.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::quoting::escape;
use crate::wal::LogReader;

/// Prints every valid record of the log in `dir` to `out`.
pub fn dump(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory (pass the log directory with --dir)",
            dir.display()
        );
    }
    let mut reader = LogReader::open(dir)
        .with_context(|| format!("cannot open the log in {}", dir.display()))?;
    let mut write_error = None;
    reader
        .poll(|record, _| {
            let written = if record.tombstone {
                writeln!(out, "DELETE {}", escape(&record.key))
            } else {
                writeln!(
                    out,
                    "WRITE {} {}",
                    escape(&record.key),
                    escape(&record.value)
                )
            };
            if write_error.is_none()
                && let Err(e) = written
            {
                write_error = Some(e);
            }
        })
        .with_context(|| format!("cannot read the log in {}", dir.display()))?;
    match write_error {
        // A closed pipe (`dsm log dump | head`) is not an error.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Some(e) => Err(e).context("cannot write the dump"),
        None => out.flush().context("cannot write the dump"),
    }
}
