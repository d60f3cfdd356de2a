//! `dsm local`: a whole cluster on this machine — master, backup and N
//! slaves as child processes of this binary on loopback — for trying DSM out
//! and for tests. Ctrl-C or SIGTERM stops every child.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

use crate::client::{Client, ClientConfig};

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
    #[arg(long, default_value_t = 12345)]
    pub port: u16,
    /// First slave port; slave i listens on this port plus i.
    #[arg(long, default_value_t = 12400)]
    pub slave_port: u16,
    /// First metrics port: master, backup, then each slave serve /metrics
    /// on consecutive ports from here.
    #[arg(long, default_value_t = 9100)]
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

/// A started child process and where its output goes.
pub struct Member {
    /// `master`, `backup` or `slave-N`.
    pub name: String,
    /// gRPC address.
    pub address: SocketAddr,
    /// HTTP address of /metrics, /healthz and /readyz.
    pub metrics: SocketAddr,
    /// File receiving the process's output.
    pub log: PathBuf,
    /// Its command line, to start it again.
    exe: PathBuf,
    args: Vec<String>,
    child: Child,
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
}

impl LocalCluster {
    /// Starts master, backup and the slaves, and waits until the master
    /// serves with every slave registered.
    pub async fn start(args: &LocalArgs) -> anyhow::Result<LocalCluster> {
        if args.slaves == 0 {
            bail!("--slaves must be at least 1");
        }
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
        };
        for (i, (name, addr)) in [("master", master), ("backup", backup)]
            .into_iter()
            .enumerate()
        {
            let cmd = vec![
                format!("--worker-threads={}", args.member_threads),
                name.to_string(),
                format!("--id={name}"),
                format!("--log-dir={}", log_dir.display()),
                format!("--slaves={}", args.slaves),
            ];
            cluster
                .members
                .push(spawn(&exe, name, addr, metrics(i as u32), cmd, &logs)?);
        }
        for (i, addr) in slave_addrs.iter().enumerate() {
            let name = format!("slave-{i}");
            let cmd = vec![
                format!("--worker-threads={}", args.member_threads),
                "slave".to_string(),
                format!("--id={name}"),
                format!("--data-dir={}", dir.join(&name).display()),
                format!("--master={master}"),
                format!("--backup={backup}"),
            ];
            cluster.members.push(spawn(
                &exe,
                &name,
                *addr,
                metrics(i as u32 + 2),
                cmd,
                &logs,
            )?);
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

    /// Sends SIGTERM to every child, waits for them, SIGKILLs stragglers.
    pub async fn stop(&mut self) {
        for m in self.members.iter() {
            if let Some(pid) = m.child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for m in self.members.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(5), m.child.wait())
                .await
                .is_err()
            {
                let _ = m.child.kill().await;
            }
        }
    }
}

/// Faults, for `dsm bench failover`.
impl LocalCluster {
    fn member(&mut self, name: &str) -> anyhow::Result<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .with_context(|| format!("no member named {name}"))
    }

    /// Sends `signal` to member `name` (SIGKILL, SIGSTOP, SIGCONT…).
    pub fn signal(&mut self, name: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let member = self.member(name)?;
        let pid = member
            .child
            .id()
            .with_context(|| format!("{name} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("cannot signal {name}"))
    }

    /// Kills member `name` with SIGKILL and waits until it is gone.
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGKILL)?;
        let _ = self.member(name)?.child.wait().await;
        Ok(())
    }

    /// Starts member `name` again with the same flags (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let member = self.member(name)?;
        member.child = spawn_logged(&member.exe, name, &member.args, &member.log, &[])?;
        Ok(())
    }
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
            m.name,
            m.address,
            m.metrics,
            m.log.display()
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

fn spawn(
    exe: &Path,
    name: &str,
    address: SocketAddr,
    metrics: SocketAddr,
    mut args: Vec<String>,
    logs: &Path,
) -> anyhow::Result<Member> {
    args.push(format!("--listen={address}"));
    args.push(format!("--metrics-listen={metrics}"));
    let log = logs.join(format!("{name}.log"));
    let child = spawn_logged(exe, name, &args, &log, &[])?;
    Ok(Member {
        name: name.to_string(),
        address,
        metrics,
        log,
        exe: exe.to_path_buf(),
        args,
        child,
    })
}

/// Starts `exe` with `args` (and `env`) as a child whose output is appended
/// to `log`, and which dies with this process even when that is killed -9.
pub fn spawn_logged(
    exe: &Path,
    name: &str,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", exe.display()))
}

/// Waits until the master serves and every slave registered, printing
/// progress once a second.
pub(crate) async fn wait_ready(
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
                if s.role == "active" && live >= slaves {
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
