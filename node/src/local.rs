//! `dsm local`: a whole cluster on this machine — master, backup and N
//! slaves as child processes of this binary on loopback — for trying DSM out
//! and for tests. Ctrl-C or SIGTERM stops every child.
//!
//! [`LocalCluster`] is the one way this crate starts a cluster of real
//! processes with `dsm local`'s flags: `dsm local` runs one on the ports it
//! is given, `dsm bench` and its sweep and failover timing one in a
//! temporary directory on free ports ([`LocalCluster::start_temporary`]).
//! Each member is a [`Process`]; the nemesis builds its own cluster of them
//! ([`crate::chaos::cluster`]) because every link there goes through a
//! fault-injecting proxy.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use dsm_wire::{Role, ports};

use crate::client::{Client, ClientConfig};
use crate::process::Process;

/// Flags of `dsm local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Number of slaves to start.
    #[arg(long, default_value_t = 3)]
    pub slaves: u32,
    /// Directory for the shared log, each slave's data and the processes'
    /// logs. Kept across runs: starting again on the same directory brings
    /// every acknowledged write back.
    #[arg(long, default_value = "dsm-local")]
    pub dir: PathBuf,
    /// Loopback address everything listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Master port; the backup listens on the next port.
    #[arg(long, default_value_t = ports::MASTER)]
    pub port: u16,
    /// First slave port; slave i listens on this port plus i.
    #[arg(long, default_value_t = ports::SLAVE)]
    pub slave_port: u16,
    /// First metrics port: master, backup, then each slave serve /metrics
    /// on consecutive ports from here.
    #[arg(long, default_value_t = ports::METRICS)]
    pub metrics_port: u16,
    /// How long to wait for the cluster to serve before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Worker threads of each member process. The members share this
    /// machine's cores; one thread each spares them the cross-thread
    /// wake-ups of several busy runtimes per core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub member_threads: u16,
}

/// A member of a local cluster: its process and where it listens.
pub struct Member {
    /// gRPC address.
    pub address: SocketAddr,
    /// HTTP address of /metrics, /healthz and /readyz.
    pub metrics: SocketAddr,
    /// The process, named `master`, `backup` or `slave-N`.
    pub process: Process,
}

/// A running local cluster; [`LocalCluster::stop`] ends it (dropping it
/// kills the children too).
pub struct LocalCluster {
    /// Master's gRPC address.
    pub master: SocketAddr,
    /// Backup's gRPC address.
    pub backup: SocketAddr,
    /// Every child process, master and backup first.
    pub members: Vec<Member>,
    /// The cluster's data directory (absolute).
    pub dir: PathBuf,
    /// Set when the cluster lives in a temporary directory
    /// ([`LocalCluster::start_temporary`]): removed with the cluster. Last
    /// of the fields, so it is dropped after the members are killed.
    _temporary: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts master, backup and the slaves, and waits until the master
    /// serves with every slave registered.
    pub async fn start(args: &LocalArgs) -> anyhow::Result<LocalCluster> {
        check_slaves(args.slaves)?;
        let exe = std::env::current_exe().context("cannot find the dsm executable")?;
        let dir = absolute(&args.dir)?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let at =
            |port: u16, offset: u32| SocketAddr::new(args.host, port.wrapping_add(offset as u16));
        let master = at(args.port, 0);
        let backup = at(args.port, 1);
        let metrics = |i: u32| at(args.metrics_port, i);
        let slave_addrs: Vec<SocketAddr> =
            (0..args.slaves).map(|i| at(args.slave_port, i)).collect();
        let wanted = [master, backup]
            .into_iter()
            .chain(slave_addrs.iter().copied())
            .chain((0..args.slaves + 2).map(metrics));
        for addr in wanted {
            TcpListener::bind(addr).with_context(|| {
                format!(
                    "port {} on {} is not free; pick others with --port, --slave-port or --metrics-port",
                    addr.port(),
                    addr.ip()
                )
            })?;
        }

        let log_dir = dir.join("log");
        let mut cluster = LocalCluster {
            master,
            backup,
            members: Vec::new(),
            dir: dir.clone(),
            _temporary: None,
        };
        let member = |name: &str, address, metrics, mut flags: Vec<String>| {
            flags.push(format!("--listen={address}"));
            flags.push(format!("--metrics-listen={metrics}"));
            let log = logs.join(format!("{name}.log"));
            let mut process = Process::new(name, &exe, flags, log);
            process.start().map(|()| Member {
                address,
                metrics,
                process,
            })
        };
        for (i, (name, addr)) in [("master", master), ("backup", backup)]
            .into_iter()
            .enumerate()
        {
            let flags = vec![
                format!("--worker-threads={}", args.member_threads),
                name.to_string(),
                format!("--id={name}"),
                format!("--log-dir={}", log_dir.display()),
                format!("--slaves={}", args.slaves),
            ];
            cluster
                .members
                .push(member(name, addr, metrics(i as u32), flags)?);
        }
        for (i, addr) in slave_addrs.iter().enumerate() {
            let name = format!("slave-{i}");
            let flags = vec![
                format!("--worker-threads={}", args.member_threads),
                "slave".to_string(),
                format!("--id={name}"),
                format!("--data-dir={}", dir.join(&name).display()),
                format!("--master={master}"),
                format!("--backup={backup}"),
            ];
            cluster
                .members
                .push(member(&name, *addr, metrics(i as u32 + 2), flags)?);
        }
        let ready = tokio::select! {
            r = wait_ready(master, backup, args.slaves, args.ready_timeout) => r,
            _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
        };
        if let Err(e) = ready {
            cluster.stop().await;
            return Err(e.context(format!(
                "the cluster did not start; see the logs in {}",
                logs.display()
            )));
        }
        Ok(cluster)
    }

    /// Starts a cluster of `slaves` slaves with `dsm local`'s defaults in a
    /// new temporary directory, on ports found free, so that several
    /// benches (and tests) can run side by side (`dsm bench`, `dsm bench
    /// sweep`, `dsm bench failover`). The directory is removed with the
    /// cluster, unless the cluster failed to start: its logs are then kept
    /// for the error message to point at.
    pub async fn start_temporary(slaves: u32) -> anyhow::Result<LocalCluster> {
        check_slaves(slaves)?;
        let dir = tempfile::Builder::new()
            .prefix("dsm-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the cluster")?;
        // master, backup, the slaves, then a metrics port for each process.
        let count = u16::try_from(2 * slaves + 4).context("too many slaves")?;
        let ports = crate::ports::free_ports(count)?;
        let args = LocalArgs {
            slaves,
            dir: dir.path().to_path_buf(),
            host: [127, 0, 0, 1].into(),
            port: ports,
            slave_port: ports + 2,
            metrics_port: ports + 2 + slaves as u16,
            ready_timeout: Duration::from_secs(60),
            member_threads: 1,
        };
        eprintln!("starting a local cluster with {slaves} slaves");
        match LocalCluster::start(&args).await {
            Ok(cluster) => Ok(LocalCluster {
                _temporary: Some(dir),
                ..cluster
            }),
            Err(e) => {
                let kept = dir.keep();
                Err(e.context(format!("cluster data kept in {}", kept.display())))
            }
        }
    }

    /// Master then backup, for [`ClientConfig::endpoints`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.master.to_string(), self.backup.to_string()]
    }

    /// Sends SIGTERM to every child, waits for them, SIGKILLs stragglers.
    pub async fn stop(&mut self) {
        for m in self.members.iter() {
            let _ = m.process.terminate();
        }
        for m in self.members.iter_mut() {
            if m.process.wait_exit(Duration::from_secs(5)).await.is_none() {
                m.process.kill().await;
            }
        }
    }
}

/// Faults, for `dsm bench failover`.
impl LocalCluster {
    fn member(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.members
            .iter_mut()
            .map(|m| &mut m.process)
            .find(|p| p.name == name)
            .with_context(|| format!("no member named {name}"))
    }

    /// Sends `signal` to member `name` (SIGKILL, SIGSTOP, SIGCONT…).
    pub fn signal(&mut self, name: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        self.member(name)?.signal(signal)
    }

    /// Kills member `name` with SIGKILL and waits until it is gone.
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.member(name)?;
        if !process.running() {
            bail!("{name} is not running");
        }
        process.kill().await;
        Ok(())
    }

    /// Starts member `name` again with the same flags (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.member(name)?.start()
    }

    /// Waits until a master is active with every slave live.
    pub async fn wait_settled(&self) -> anyhow::Result<()> {
        let slaves = self.members.len().saturating_sub(2) as u32;
        wait_ready(self.master, self.backup, slaves, Duration::from_secs(60)).await
    }

    /// The name of the active master-capable process (`master` or `backup`).
    pub async fn active_member(&self) -> anyhow::Result<String> {
        for (name, address) in [("master", self.master), ("backup", self.backup)] {
            let client = Client::new(ClientConfig {
                endpoints: vec![address.to_string()],
                timeout: Duration::from_secs(1),
                retry_for: Duration::ZERO,
            });
            if client
                .endpoint_status()
                .await
                .is_ok_and(|s| s.role() == Some(Role::Active))
            {
                return Ok(name.to_string());
            }
        }
        bail!("no master-capable process is active")
    }
}

/// A cluster needs at least one slave to store anything.
fn check_slaves(slaves: u32) -> anyhow::Result<()> {
    if slaves == 0 {
        bail!("--slaves must be at least 1");
    }
    Ok(())
}

/// Runs the local cluster until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(&args).await?;
    let exe = std::env::current_exe().context("cannot find the dsm executable")?;
    let mut banner = format!(
        "DSM local cluster is up ({} slaves, data in {})\n",
        args.slaves,
        cluster.dir.display()
    );
    for m in &cluster.members {
        banner += &format!(
            "  {:<9} {:<21} metrics: http://{}/metrics  log: {}\n",
            m.process.name,
            m.address,
            m.metrics,
            m.process.log_path().display()
        );
    }
    banner += &format!(
        "\nConnect with:\n  {} client --master {} --backup {}\n\nPress Ctrl-C to stop the cluster.\n",
        client_program(&exe),
        cluster.master,
        cluster.backup
    );
    // Whoever reads our output may be gone (`dsm local | head`): the
    // cluster keeps running regardless.
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());

    shutdown_signal().await;
    eprintln!("stopping...");
    cluster.stop().await;
    eprintln!("stopped");
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// How to call this binary in the printed client command: plain `dsm` when
/// that is the one on PATH, its full path otherwise.
fn client_program(exe: &Path) -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| {
            std::fs::canonicalize(p.join("dsm"))
                .ok()
                .zip(std::fs::canonicalize(exe).ok())
                .is_some_and(|(a, b)| a == b)
        })
    });
    if on_path {
        "dsm".to_string()
    } else {
        exe.display().to_string()
    }
}

/// Waits until the master serves and every slave registered, printing
/// progress once a second.
async fn wait_ready(
    master: SocketAddr,
    backup: SocketAddr,
    slaves: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = Client::new(ClientConfig {
        endpoints: vec![master.to_string(), backup.to_string()],
        timeout: Duration::from_secs(1),
        retry_for: Duration::from_secs(1),
    });
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let state = match client.status().await {
            Ok(s) => {
                let live = s.slaves.iter().filter(|s| s.live).count() as u32;
                if s.role() == Some(Role::Active) && live >= slaves {
                    return Ok(());
                }
                format!("{} slaves of {slaves} registered", live)
            }
            Err(e) => format!("waiting for the master ({e})"),
        };
        if started.elapsed() > timeout {
            bail!("not ready after {timeout:?}: {state}");
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("starting: {state}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
