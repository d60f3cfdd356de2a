//! The `dsm-operator` binary run outside a cluster, as developers and CI run it: what it
//! logs and how it fails when leader election has no namespace for its Lease.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A kubeconfig whose current context names no namespace (so kube would assume
/// `default`), pointing at a port where nothing listens.
fn kubeconfig_without_namespace() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubeconfig-no-namespace");
    let yaml = "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
                clusters:\n  - name: c\n    cluster:\n      server: https://127.0.0.1:1\n\
                users:\n  - name: u\n    user:\n      token: t\n\
                contexts:\n  - name: dev\n    context:\n      cluster: c\n      user: u\n";
    std::fs::write(&path, yaml).expect("write kubeconfig");
    path
}

/// `dsm-operator run` with `args`, stderr a pipe (not a terminal), and none of the
/// environment variables that would name a namespace.
fn run_outside_a_cluster(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dsm-operator"));
    command
        .arg("run")
        .args(args)
        .env("KUBECONFIG", kubeconfig_without_namespace())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("DSM_OPERATOR_") || name == "POD_NAMESPACE" {
            command.env_remove(name);
        }
    }
    command.output().expect("run dsm-operator")
}

#[test]
fn without_a_lease_namespace_it_fails_at_once_naming_the_flags() {
    let out = run_outside_a_cluster(&["--metrics-listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "no namespace for the leader Lease",
        "--lease-namespace",
        "DSM_OPERATOR_LEASE_NAMESPACE",
    ] {
        assert!(
            stderr.contains(needle),
            "stderr lacks `{needle}`:\n{stderr}"
        );
    }
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let out = run_outside_a_cluster(&["--metrics-listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dsm-operator starting"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in:\n{stderr}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let out = run_outside_a_cluster(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert_eq!(
        line["fields"]["message"], "dsm-operator starting",
        "{first}"
    );
    assert_eq!(line["level"], "INFO");
}
