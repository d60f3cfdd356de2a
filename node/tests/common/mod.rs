//! Test harness: a DSM cluster of real `dsm` processes on loopback.
//!
//! Every process gets a free port on 127.0.0.1 ([`dsm::ports`]), writes its
//! log to a file in the cluster's temporary directory, and is killed when the
//! [`Cluster`] is dropped (also when a test fails), so no test leaves
//! processes behind ([`dsm::process`]).
//! Faults are injected the way an operator would meet them: SIGKILL,
//! SIGSTOP/SIGCONT, restarts, files damaged on disk, and network faults on
//! master→slave links through `dsm::chaos::proxy` (`Options::slave_link_proxies`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dsm::chaos::proxy::Proxy;
use dsm::client::{Client, ClientConfig};
use dsm::process::Process;
use dsm_wire::Role;
use nix::sys::signal::Signal;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Path of the `dsm` binary under test.
pub fn dsm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dsm")
}

/// A free TCP port on 127.0.0.1 (see [`dsm::ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free TCP ports on 127.0.0.1 (for `dsm
/// local`, which numbers its members from a base port).
pub fn free_ports(n: u16) -> u16 {
    dsm::ports::free_ports(n).expect("free ports")
}

/// One cluster member: where it listens, and its process.
pub struct Member {
    pub name: String,
    pub address: String,
    /// HTTP address of /metrics, /healthz, /readyz.
    pub metrics_address: String,
    /// Extra environment of the next start (e.g. FAILPOINTS); clear it
    /// before a restart that should run clean.
    pub env: Vec<(String, String)>,
    /// Killed when the member is dropped, continued first if paused.
    process: Process,
}

impl Member {
    fn new(
        name: String,
        address: String,
        metrics_address: String,
        args: Vec<String>,
        log: PathBuf,
    ) -> Member {
        Member {
            process: Process::new(&name, dsm_bin(), args, log),
            name,
            address,
            metrics_address,
            env: Vec::new(),
        }
    }

    fn start(&mut self) {
        // Every member logs at info, whatever RUST_LOG the tests run with.
        self.process.env = std::iter::once(("RUST_LOG".to_string(), "info".to_string()))
            .chain(self.env.iter().cloned())
            .collect();
        self.process.start().expect("spawn dsm");
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

/// Tunables of a test cluster.
#[derive(Clone)]
pub struct Options {
    pub slaves: usize,
    pub extra_master_args: Vec<String>,
    /// Put a fault-injecting proxy ([`Proxy`]) on each master→slave link:
    /// slaves advertise the proxy's address, so every call a master makes
    /// to slave `i` goes through `Cluster::slave_links[i]`.
    pub slave_link_proxies: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            slaves: 3,
            extra_master_args: Vec::new(),
            slave_link_proxies: false,
        }
    }
}

/// A running test cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub master: Member,
    pub backup: Member,
    pub slaves: Vec<Member>,
    /// Master→slave proxies, one per slave, when
    /// [`Options::slave_link_proxies`] is set (stopped when dropped).
    pub slave_links: Vec<Proxy>,
}

impl Cluster {
    /// Starts master, backup and slaves, and waits until the master serves
    /// with every slave registered.
    pub async fn start(options: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let proxied = options.slave_link_proxies;
        let mut cluster = Cluster::configure(dir, options);
        if proxied {
            for slave in cluster.slaves.iter_mut() {
                let target = slave.address.parse().expect("slave address");
                let proxy = Proxy::start(&format!("master->{}", slave.name), target)
                    .await
                    .expect("start a proxy");
                slave
                    .process
                    .args
                    .push(format!("--advertise={}", proxy.address()));
                cluster.slave_links.push(proxy);
            }
        }
        cluster.start_all();
        cluster.wait_ready().await;
        cluster
    }

    /// A cluster configured but not started, for tests that prepare its
    /// directories or members' environment first; then [`start_all`] and
    /// [`wait_ready`].
    pub fn prepare(options: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        Cluster::configure(dir, options)
    }

    fn configure(dir: tempfile::TempDir, options: Options) -> Cluster {
        let master_port = free_port();
        let backup_port = free_port();
        let master_addr = format!("127.0.0.1:{master_port}");
        let backup_addr = format!("127.0.0.1:{backup_port}");
        let log_dir = dir.path().join("log");
        let master_like = |role: &str, addr: &str| -> Member {
            let mut args = vec![
                role.to_string(),
                format!("--listen={addr}"),
                format!("--id={role}"),
                format!("--log-dir={}", log_dir.display()),
                format!("--slaves={}", options.slaves),
                "--lease-ttl=1500ms".to_string(),
                "--slave-timeout=1500ms".to_string(),
            ];
            let metrics_address = format!("127.0.0.1:{}", free_port());
            args.push(format!("--metrics-listen={metrics_address}"));
            args.extend(options.extra_master_args.iter().cloned());
            let log = dir.path().join(format!("{role}.log"));
            Member::new(
                role.to_string(),
                addr.to_string(),
                metrics_address,
                args,
                log,
            )
        };
        let master = master_like("master", &master_addr);
        let backup = master_like("backup", &backup_addr);
        let slaves = (0..options.slaves)
            .map(|i| {
                let name = format!("slave-{i}");
                let address = format!("127.0.0.1:{}", free_port());
                let metrics_address = format!("127.0.0.1:{}", free_port());
                let args = vec![
                    "slave".to_string(),
                    format!("--listen={address}"),
                    format!("--id={name}"),
                    format!("--data-dir={}", dir.path().join(&name).display()),
                    format!("--master={master_addr}"),
                    format!("--backup={backup_addr}"),
                    "--heartbeat=250ms".to_string(),
                    format!("--metrics-listen={metrics_address}"),
                ];
                let log = dir.path().join(format!("{name}.log"));
                Member::new(name, address, metrics_address, args, log)
            })
            .collect();
        Cluster {
            dir,
            master,
            backup,
            slaves,
            slave_links: Vec::new(),
        }
    }

    /// Starts every member that is not running.
    pub fn start_all(&mut self) {
        for m in self.members_mut() {
            if !m.process.running() {
                m.start();
            }
        }
    }

    /// A power cut: every member killed with SIGKILL at once, then all
    /// started again; returns once the cluster serves.
    pub async fn power_cut_and_restart(&mut self) {
        for m in self.members_mut() {
            m.kill9();
        }
        self.start_all();
        self.wait_ready().await;
    }

    fn members_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        [&mut self.master, &mut self.backup]
            .into_iter()
            .chain(self.slaves.iter_mut())
    }

    /// The shared log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A client that knows both master-capable addresses.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![self.master.address.clone(), self.backup.address.clone()],
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(30),
        })
    }

    /// A client that talks to exactly one address and does not retry.
    pub fn direct_client(address: &str) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![address.to_string()],
            timeout: Duration::from_secs(2),
            retry_for: Duration::ZERO,
        })
    }

    /// Waits until some master is active and serving with every running
    /// slave live and no key under-replicated.
    pub async fn wait_ready(&self) {
        let running = self.slaves.iter().filter(|s| s.process.running()).count();
        self.wait_for(&format!("{running} live slaves, fully replicated"), |s| {
            s.role() == Some(Role::Active)
                && s.slaves.iter().filter(|x| x.live).count() >= running
                && s.under_replicated_keys == 0
        })
        .await;
    }

    /// Polls the cluster status until `done` holds, or panics after [`WAIT`]
    /// with the member logs.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&dsm::proto::StatusReply) -> bool) {
        let client = Client::new(ClientConfig {
            endpoints: vec![self.master.address.clone(), self.backup.address.clone()],
            timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(1),
        });
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < WAIT {
            match client.status().await {
                Ok(status) if done(&status) => return,
                Ok(status) => last = format!("{status:?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; last status: {last}\n{}",
            self.logs()
        );
    }

    /// Waits until the member at `address` reports itself active.
    pub async fn wait_active(&self, address: &str) {
        let client = Cluster::direct_client(address);
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Ok(status) = client.endpoint_status().await
                && status.role() == Some(Role::Active)
                && status.slaves.iter().any(|s| s.live)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{address} never became active\n{}", self.logs());
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        [&self.master, &self.backup]
            .into_iter()
            .chain(self.slaves.iter())
            .map(|m| {
                let log = m.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("----- {} -----\n{}\n", m.name, tail.join("\n"))
            })
            .collect()
    }
}

/// Fault injection on members.
impl Member {
    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        self.process.kill_blocking();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if self.process.terminate().is_ok()
            && self
                .process
                .wait_exit_blocking(Duration::from_secs(10))
                .is_none()
        {
            self.kill9();
        }
    }

    /// SIGTERM, without waiting (see [`Member::wait_exit`]).
    pub fn terminate(&self) {
        self.process.terminate().expect("SIGTERM");
    }

    /// SIGSTOP: the process freezes with its sockets and locks held.
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP).expect("SIGSTOP");
    }

    /// The process id, while running.
    pub fn process_id(&self) -> Option<u32> {
        self.process.id()
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT).expect("SIGCONT");
    }

    /// Starts a member of a [`Cluster::prepare`]d cluster on its own.
    pub fn start_alone(&mut self) {
        if !self.process.running() {
            self.start();
        }
    }

    /// Starts the member again with the same flags and directories.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// Whether the process has exited; its exit status if so.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit_blocking(timeout)
    }
}

/// Runs `dsm` with arguments and stdin, returning (exit code, stdout, stderr).
pub fn run_dsm(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(dsm_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dsm");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().expect("dsm output");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bounds a test body's time.
pub async fn bounded<F: std::future::Future<Output = T>, T>(body: F) -> T {
    tokio::time::timeout(Duration::from_secs(240), body)
        .await
        .expect("test took longer than 240 s")
}

/// The newest log segment file in `dir`.
pub fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kv_store.") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    segments.pop().expect("at least one segment")
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub fn try_http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`try_http_get`] that panics when the server cannot be reached.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    try_http_get(address, path).unwrap_or_else(|e| panic!("GET http://{address}{path}: {e}"))
}
