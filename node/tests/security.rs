//! TLS, mutual TLS between members and client tokens, end to end: a master
//! and slaves as real processes with certificates made here (rcgen) from a
//! cluster CA, and a second "rogue" CA standing for everyone else.
//!
//! One test runs the whole story on one cluster (starting processes is the
//! slow part on a loaded machine): the right CA and token work; plaintext,
//! a client trusting another CA, an expired server certificate, a missing or
//! unknown token, a read-only token writing, a member call without a client
//! certificate and a slave with a certificate of another CA are all
//! refused; rotated certificate files are served to new connections without
//! a restart.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{WAIT, bounded, dsm_bin, free_port};
use dsm::client::{Client, ClientConfig, ClientError};
use dsm::proto::control_client::ControlClient;
use dsm::security::{BearerToken, ClientSecurity, ClientTls, endpoint};
use dsm_wire::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use tonic::Code;

/// A certificate authority made for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Where its certificate is written (PEM).
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let pem = dir.join(format!("{name}.crt"));
        std::fs::write(&pem, issuer.pem()).expect("write CA");
        Ca { issuer, pem }
    }

    /// A member certificate for 127.0.0.1/localhost (server and client
    /// use), valid now, or expired since 2020 when `expired`. Returns the
    /// PEM of the certificate and of its key.
    fn issue(&self, name: &str, expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// [`Ca::issue`] written to `<dir>/<name>.crt` and `<dir>/<name>.key`.
    fn issue_files(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(name, false);
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        (cert_path, key_path)
    }
}

/// Replaces a file the way a rotation does: write aside, rename over.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write rotated file");
    std::fs::rename(&tmp, path).expect("rename rotated file");
}

/// A `dsm` process killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log handle");
        let child = Command::new(dsm_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn dsm");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(master: &str, tls: Option<ClientTls>, token: Option<&str>) -> Client {
    let security = ClientSecurity {
        tls,
        token: token
            .map(|t| BearerToken::new(t).expect("token"))
            .unwrap_or_default(),
    };
    Client::with_security(
        ClientConfig {
            endpoints: vec![master.to_string()],
            timeout: Duration::from_secs(5),
            retry_for: Duration::ZERO,
        },
        security,
    )
}

fn code_of(err: &ClientError) -> Option<Code> {
    match err {
        ClientError::Other { status, .. } => Some(status.code()),
        _ => None,
    }
}

/// The certificate a TLS server at `address` presents, verified against
/// `ca` (an error for an untrusted or expired one).
async fn served_certificate(address: &str, ca: &Path) -> Result<Vec<u8>, String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in dsm::security::tls::load_certs(ca).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(certs[0].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mtls_and_tokens() {
    bounded(async {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let cluster_ca = Ca::new(dir, "cluster-ca");
        let rogue_ca = Ca::new(dir, "rogue-ca");
        let (master_crt, master_key) = cluster_ca.issue_files(dir, "master");
        let (slave_crt, slave_key) = cluster_ca.issue_files(dir, "slave-0");
        let (rogue_crt, rogue_key) = rogue_ca.issue_files(dir, "rogue");
        let tokens = dir.join("tokens");
        let ro_tokens = dir.join("ro-tokens");
        std::fs::write(&tokens, "# read-write\nrw-secret\n").expect("token file");
        std::fs::write(&ro_tokens, "ro-secret\n").expect("token file");

        let master = format!("127.0.0.1:{}", free_port());
        let nobody = format!("127.0.0.1:{}", free_port());
        let tls_flags = |crt: &Path, key: &Path| {
            vec![
                format!("--tls-cert={}", crt.display()),
                format!("--tls-key={}", key.display()),
                format!("--tls-ca={}", cluster_ca.pem.display()),
            ]
        };
        let mut args = vec![
            "master".to_string(),
            format!("--listen={master}"),
            format!("--log-dir={}", dir.join("log").display()),
            "--slaves=1".to_string(),
            "--metrics-listen=none".to_string(),
            format!("--token-file={}", tokens.display()),
            format!("--read-only-token-file={}", ro_tokens.display()),
        ];
        args.extend(tls_flags(&master_crt, &master_key));
        let master_proc = Proc::spawn(dir, "master", &args);
        let slave = |name: &str, crt: &Path, key: &Path| {
            let mut args = vec![
                "slave".to_string(),
                format!("--listen=127.0.0.1:{}", free_port()),
                format!("--id={name}"),
                format!("--data-dir={}", dir.join(name).display()),
                format!("--master={master}"),
                format!("--backup={nobody}"),
                "--heartbeat=250ms".to_string(),
                "--metrics-listen=none".to_string(),
            ];
            args.extend(tls_flags(crt, key));
            Proc::spawn(dir, name, &args)
        };
        let slave_proc = slave("slave-0", &slave_crt, &slave_key);
        // Trusts the cluster CA, but its own certificate is from another.
        let rogue_proc = slave("rogue", &rogue_crt, &rogue_key);
        let logs = || {
            format!(
                "--- master\n{}\n--- slave\n{}\n--- rogue\n{}",
                master_proc.log(),
                slave_proc.log(),
                rogue_proc.log()
            )
        };

        let good_tls = || ClientTls::new(cluster_ca.pem.clone(), None, None).expect("client TLS");
        let admin = client(&master, Some(good_tls()), Some("rw-secret"));

        // The right CA and token: wait for the cluster, then write and read.
        let started = Instant::now();
        loop {
            match admin.status().await {
                Ok(s) if s.role() == Some(Role::Active) && s.slaves.iter().any(|x| x.live) => break,
                _ if started.elapsed() > WAIT => panic!("cluster never served\n{}", logs()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        admin
            .write(b"k", b"v1")
            .await
            .expect("write with the right CA and token");
        let (value, _) = admin.read(b"k").await.expect("read").expect("value");
        assert_eq!(value, Bytes::from_static(b"v1"));

        // Read-only token: reads and status, no writes.
        let reader = client(&master, Some(good_tls()), Some("ro-secret"));
        assert_eq!(
            reader
                .read(b"k")
                .await
                .expect("read-only read")
                .map(|v| v.0),
            Some(Bytes::from_static(b"v1"))
        );
        reader.status().await.expect("read-only status");
        let err = reader
            .write(b"k", b"v2")
            .await
            .expect_err("read-only write");
        assert_eq!(code_of(&err), Some(Code::PermissionDenied), "{err}");

        // Bad or missing token.
        for token in [Some("rw-secreT"), Some(""), None] {
            let c = client(&master, Some(good_tls()), token);
            let err = c.read(b"k").await.expect_err("bad token");
            assert_eq!(
                code_of(&err),
                Some(Code::Unauthenticated),
                "{token:?}: {err}"
            );
        }

        // Plaintext to a TLS server.
        let plain = client(&master, None, Some("rw-secret"));
        let err = plain.read(b"k").await.expect_err("plaintext client");
        // The server fails the handshake: depending on timing the client
        // sees the connection drop or the TLS alert as a broken HTTP/2
        // frame — a transport or protocol error, never an answer.
        assert!(
            matches!(err, ClientError::Unavailable { .. })
                || code_of(&err).is_some_and(|c| {
                    matches!(c, Code::Unknown | Code::Unavailable | Code::Internal)
                }),
            "{err}"
        );

        // A client trusting another CA refuses the master's certificate.
        let wrong = ClientTls::new(rogue_ca.pem.clone(), None, None).expect("client TLS");
        let err = client(&master, Some(wrong), Some("rw-secret"))
            .read(b"k")
            .await
            .expect_err("wrong CA");
        assert!(
            format!("{err}").contains("certificate"),
            "{err}\n{:?}\n{}",
            served_certificate(&master, &rogue_ca.pem).await,
            logs()
        );

        // A member service without a client certificate.
        let channel = endpoint(&master, Some(&good_tls()))
            .expect("endpoint")
            .connect()
            .await
            .expect("TLS connect without client certificate");
        let status = ControlClient::new(channel)
            .register(dsm::proto::RegisterRequest {
                slave_id: "intruder".into(),
                address: "127.0.0.1:1".into(),
            })
            .await
            .expect_err("register without a certificate");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        // The rogue slave never registered: its handshakes were refused.
        let started = Instant::now();
        while !rogue_proc
            .log()
            .contains("no master accepted the registration")
        {
            assert!(started.elapsed() < WAIT, "rogue never tried\n{}", logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = admin.status().await.expect("status");
        let ids: Vec<&str> = status.slaves.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["slave-0"], "{}", logs());

        // Rotation to an expired certificate: new connections are refused.
        let (expired_crt, expired_key) = cluster_ca.issue("master", true);
        replace(&master_key, &expired_key);
        replace(&master_crt, &expired_crt);
        let started = Instant::now();
        loop {
            match served_certificate(&master, &cluster_ca.pem).await {
                Err(e) if e.contains("xpired") => break,
                other => {
                    assert!(
                        started.elapsed() < WAIT,
                        "never saw the expired certificate: {other:?}\n{}",
                        logs()
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        let err = client(&master, Some(good_tls()), Some("rw-secret"))
            .read(b"k")
            .await
            .expect_err("expired server certificate");
        assert!(format!("{err}").contains("xpired"), "{err}");

        // Rotation to a fresh certificate: served without a restart.
        let (fresh_crt, fresh_key) = cluster_ca.issue("master", false);
        replace(&master_key, &fresh_key);
        replace(&master_crt, &fresh_crt);
        let fresh_der =
            dsm::security::tls::load_certs(&master_crt).expect("fresh cert")[0].to_vec();
        let started = Instant::now();
        loop {
            match served_certificate(&master, &cluster_ca.pem).await {
                Ok(der) if der == fresh_der => break,
                other => {
                    assert!(
                        started.elapsed() < WAIT,
                        "never saw the fresh certificate: {other:?}\n{}",
                        logs()
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        let fresh = client(&master, Some(good_tls()), Some("rw-secret"));
        fresh
            .write(b"k", b"v3")
            .await
            .expect("write after rotation");
        assert_eq!(
            fresh.read(b"k").await.expect("read").map(|v| v.0),
            Some(Bytes::from_static(b"v3"))
        );
    })
    .await;
}

#[test]
fn bad_certificate_files_are_clear_startup_errors() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let ca = Ca::new(dir, "ca");
    let (crt, key) = ca.issue_files(dir, "m");
    let garbage = dir.join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = dir.join("missing.key");
    let run = |cert: &Path, key: &Path| {
        let (code, _, stderr) = common::run_dsm(
            &[
                "master",
                "--listen=127.0.0.1:0",
                "--metrics-listen=none",
                &format!("--log-dir={}", dir.join("log").display()),
                &format!("--tls-cert={}", cert.display()),
                &format!("--tls-key={}", key.display()),
                &format!("--tls-ca={}", ca.pem.display()),
            ],
            b"",
        );
        (code, stderr)
    };
    let (code, stderr) = run(&garbage, &key);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("garbage.crt"), "{stderr}");
    let (code, stderr) = run(&crt, &missing);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing.key"), "{stderr}");
}
