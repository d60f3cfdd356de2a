//! How `dsm client`'s answers are shown: one line per DELETE, key, change,
//! compaction and drain, and the status as a table or JSON. Shared by the
//! one-shot commands ([`super::cli`]) and the REPL ([`super::repl`]), so both
//! print the same thing for the same answer; keys and values are shown with
//! [`crate::quoting::escape`], so whatever is printed can be pasted back.

use std::io::Write;

use super::Change;
use crate::proto;
use crate::quoting::escape;
use crate::version::Version;

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

/// The status as JSON, field names as in `wire/proto/dsm.proto`.
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
