//! The `dsm` command line as a person uses it: `dsm client` one-shot
//! commands and exit codes, the REPL fed through a pipe, `dsm log dump`, and
//! `dsm local` printing a client command that works.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Options, bounded, dsm_bin, free_port, free_ports, run_dsm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_and_exit_codes() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let master = format!("--master={}", cluster.master.address);
        let backup = format!("--backup={}", cluster.backup.address);
        let client = |args: &[&str], stdin: &[u8]| {
            let mut all = vec!["client", master.as_str(), backup.as_str()];
            all.extend_from_slice(args);
            run_dsm(&all, stdin)
        };

        let (code, _, err) = client(&["write", "greeting", "hello world"], b"");
        assert_eq!(code, 0, "write succeeds: {err}");
        let (code, out, _) = client(&["read", "greeting"], b"");
        assert_eq!((code, out), (0, b"hello world\n".to_vec()), "read prints the value");
        let (code, _, _) = client(&["read", "missing"], b"");
        assert_eq!(code, 1, "not found has its own exit code");

        let (code, out, _) = client(
            &[],
            b"WRITE \"two words\" \"a value\\nwith a newline\"\nread \"two words\"\nREAD nope\nFROB x\nWRITE onlykey\n",
        );
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 2, "piped input with failing lines exits 2 after running them all: {out}");
        assert!(out.contains("OK"), "WRITE acknowledged: {out}");
        assert!(out.contains(r#""a value\nwith a newline""#), "value shown escaped: {out}");
        assert!(out.contains("(not found)"), "missing key reported: {out}");
        assert!(out.contains("unknown command"), "bad command reported: {out}");
        assert!(out.contains("usage: WRITE key value"), "wrong arity reported: {out}");

        let (code, out, _) = client(&["read", "two words"], b"");
        assert_eq!((code, out), (0, b"a value\nwith a newline\n".to_vec()));
    })
    .await;
}

#[test]
fn unreachable_cluster_is_a_clear_error() {
    let dead_a = format!("--master=127.0.0.1:{}", free_port());
    let dead_b = format!("--backup=127.0.0.1:{}", free_port());
    let (code, _, err) = run_dsm(
        &["client", &dead_a, &dead_b, "--retry-for=1s", "read", "k"],
        b"",
    );
    assert_eq!(code, 2, "errors exit with 2: {err}");
    assert!(
        err.contains("127.0.0.1"),
        "the error names the addresses tried: {err}"
    );
}

#[test]
fn malformed_flags_are_refused() {
    let (code, _, err) = run_dsm(&["master", "--slaves=zero"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("--slaves"), "{err}");
    let (code, _, err) = run_dsm(&["master", "--slaves=4", "--replication-factor=2"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("not a majority"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_dump_prints_write_key_value_lines() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        client.write(b"plain", b"text").await.expect("write");
        client
            .write(b"with space", b"line1\nline2")
            .await
            .expect("write");
        cluster.master.stop();
        let dir = cluster.log_dir();
        let (code, out, err) = run_dsm(&["log", "dump", &format!("--dir={}", dir.display())], b"");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("WRITE plain text\n"), "{out}");
        assert!(
            out.contains("WRITE \"with space\" \"line1\\nline2\"\n"),
            "{out}"
        );
    })
    .await;
}

/// README's first command: `dsm local` starts a cluster and prints a client
/// command that works; SIGTERM stops everything.
#[test]
fn local_cluster_prints_a_working_client_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_ports(2);
    let slave_port = free_ports(3);
    let metrics_port = free_ports(5);
    let mut local = Command::new(dsm_bin())
        .args([
            "local",
            &format!("--dir={}", dir.path().display()),
            &format!("--port={port}"),
            &format!("--slave-port={slave_port}"),
            &format!("--metrics-port={metrics_port}"),
            "--slaves=3",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("local.err")).expect("stderr file"))
        .spawn()
        .expect("spawn dsm local");
    let stdout = local.stdout.take().expect("stdout");
    let started = Instant::now();
    let mut command = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.trim_start().contains(" client --master ") {
            command = Some(line.trim().to_string());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "dsm local too slow"
        );
    }
    let Some(command) = command else {
        let err = std::fs::read_to_string(dir.path().join("local.err")).unwrap_or_default();
        panic!("dsm local printed no client command; its stderr:\n{err}");
    };
    let mut words: Vec<String> = command.split_whitespace().map(String::from).collect();
    let program = words.remove(0);
    let program = if program == "dsm" {
        dsm_bin().to_string()
    } else {
        program
    };
    let run = |extra: &[&str]| {
        Command::new(&program)
            .args(&words)
            .args(extra)
            .output()
            .expect("run printed client command")
    };
    assert!(run(&["write", "from-readme", "works"]).status.success());
    let out = run(&["read", "from-readme"]);
    assert_eq!(out.stdout, b"works\n");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(local.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = local.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "dsm local did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dsm local exits cleanly on SIGTERM");
    let stopped = Command::new(&program)
        .args(&words)
        .args(["--retry-for=0s", "read", "x"])
        .output();
    assert_eq!(
        stopped.map(|o| o.status.code()).ok().flatten(),
        Some(2),
        "every member stopped"
    );
}
