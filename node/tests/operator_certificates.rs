//! The certificates `dsm-operator` issues for a TLS DsmCluster work with a real `dsm
//! master`: it starts with the operator's member certificate, key and CA, and `dsm client`
//! reaches it over TLS verifying the names the cluster is dialled at in Kubernetes (the
//! master Service, the leader Service, a slave's pod name under the headless Service —
//! every member presents the same certificate), while a client trusting another CA, or
//! expecting a name the certificate does not carry, is refused.
//!
//! Loopback has no cluster DNS, so the client dials 127.0.0.1 and names the server it
//! expects with `--tls-server-name`, which is what it then verifies.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{WAIT, dsm_bin, free_port, run_dsm};
use dsm_operator::certs;
use dsm_operator::objects::Names;
use jiff::Timestamp;

/// A `dsm master` killed when dropped, so a failing test leaves no process behind.
struct Master(Child);

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dsm client status` against `master` trusting `ca` and expecting `server_name`, without
/// retries: its exit code and stderr.
fn status(master: &str, ca: &Path, server_name: &str) -> (i32, String) {
    let (code, _, stderr) = run_dsm(
        &[
            "client",
            "--master",
            master,
            "--backup",
            master,
            "--timeout",
            "5s",
            "--retry-for",
            "0s",
            "--tls-ca",
            ca.to_str().expect("UTF-8 path"),
            "--tls-server-name",
            server_name,
            "status",
        ],
        b"",
    );
    (code, stderr)
}

#[test]
fn a_master_serves_the_operator_certificate_to_clients_of_the_cluster_ca_only() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let names = Names {
        cluster: "dsm".to_string(),
        namespace: "prod".to_string(),
    };
    let now = Timestamp::now();
    let ca = certs::generate_ca(&names, now).expect("CA");
    let member = certs::issue_member(&ca, &names, now).expect("member certificate");
    let other_ca = certs::generate_ca(&names, now).expect("another CA");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    // The files as the Secret volume presents them at /etc/dsm/tls.
    let (cert, key, ca_file) = (
        write("tls.crt", &member.cert),
        write("tls.key", &member.key),
        write("ca.crt", &member.ca),
    );
    let other_ca_file = write("other-ca.crt", &other_ca.cert);

    let address = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("master.log")).expect("log file");
    let child = Command::new(dsm_bin())
        .arg("master")
        .arg(format!("--listen={address}"))
        .arg(format!("--log-dir={}", dir.join("log").display()))
        .arg("--slaves=1")
        .arg("--metrics-listen=none")
        .arg(format!("--tls-cert={}", cert.display()))
        .arg(format!("--tls-key={}", key.display()))
        .arg(format!("--tls-ca={}", ca_file.display()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn dsm master");
    let _master = Master(child);
    let master_log = || std::fs::read_to_string(dir.join("master.log")).unwrap_or_default();

    // The master Service name, as the ConfigMap and the operator dial it.
    let started = Instant::now();
    loop {
        let (code, stderr) = status(&address, &ca_file, "dsm-master.prod.svc");
        if code == 0 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the master never answered over TLS: {stderr}\n{}",
            master_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for name in [
        "dsm-leader.prod.svc.cluster.local",
        "dsm-backup.prod",
        // A slave's --advertise name, covered by the headless Service's wildcard.
        "dsm-slave-2.dsm-slaves.prod.svc",
    ] {
        let (code, stderr) = status(&address, &ca_file, name);
        assert_eq!(code, 0, "{name}: {stderr}");
    }

    // Another CA, or a name of another cluster: refused.
    let (code, stderr) = status(&address, &other_ca_file, "dsm-master.prod.svc");
    assert_eq!(
        code, 2,
        "a client trusting another CA got through: {stderr}"
    );
    let (code, stderr) = status(&address, &ca_file, "other-master.prod.svc");
    assert_eq!(code, 2, "a name the certificate lacks verified: {stderr}");
}
