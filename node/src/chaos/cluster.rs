//! The cluster the nemesis runs: master, backup and slaves as `dsm` processes
//! on loopback, every network link through a [`Proxy`], and every process's
//! wall clock under the nemesis's control (libfaketime preloaded, offset read
//! from a file the nemesis rewrites).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dsm_wire::Role;
use tokio::time::Instant;

use super::faults::{Fault, Link, Member};
use super::nemesis::NemesisConfig;
use super::proxy::{Mode, Proxy};
use crate::client::{Client, ClientConfig};
use crate::ports::free_port;
use crate::process::Process;
use crate::proto::StatusReply;

/// Slave heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// libfaketime, if installed: what makes clock faults possible.
pub fn libfaketime() -> Option<PathBuf> {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// The cluster under test.
pub struct Cluster {
    /// Master (0) and backup (1).
    pub masters: [Process; 2],
    /// Their real addresses, for the observer and direct calls.
    pub master_addrs: [SocketAddr; 2],
    /// The slaves.
    pub slaves: Vec<Process>,
    /// The slaves' ids.
    pub slave_ids: Vec<String>,
    /// Client→master proxies; the masters advertise these.
    client_links: [Proxy; 2],
    /// Master→slave proxies; slaves advertise these.
    to_slave: Vec<Proxy>,
    /// Slave→master proxies: `[slave][master]`.
    from_slave: Vec<[Proxy; 2]>,
    /// Directory of the per-process clock files, when libfaketime is there.
    clocks: Option<PathBuf>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// The environment that makes a process's wall clock follow `clock_file`, an
/// offset such as `+10` or `-30` in seconds, re-read every second (monotonic
/// clocks untouched: NTP steps and suspended VMs move wall clocks).
pub fn faketime_env(lib: &Path, clock_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            clock_file.display().to_string(),
        ),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
    ]
}

impl Cluster {
    /// Starts every process and waits until a master serves with every
    /// slave live.
    pub async fn start(config: &NemesisConfig) -> anyhow::Result<Cluster> {
        let dir = &config.dir;
        let log_dir = dir.join("log");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let lib = if config.clock_faults {
            libfaketime()
        } else {
            None
        };
        let clocks = lib.as_ref().map(|_| dir.join("clocks"));
        if let Some(clocks) = &clocks {
            std::fs::create_dir_all(clocks)
                .with_context(|| format!("cannot create {}", clocks.display()))?;
        }
        // Every process logs at info whatever RUST_LOG the nemesis runs
        // with, and follows its own clock file when clocks are faked.
        let env_for = |name: &str| -> anyhow::Result<Vec<(String, String)>> {
            let mut env = vec![("RUST_LOG".to_string(), "info".to_string())];
            if let (Some(lib), Some(clocks)) = (&lib, &clocks) {
                let file = clocks.join(name);
                std::fs::write(&file, "+0\n")
                    .with_context(|| format!("cannot write {}", file.display()))?;
                env.extend(faketime_env(lib, &file));
            }
            Ok(env)
        };
        let master_addrs = [free_addr()?, free_addr()?];
        let client_links = [
            Proxy::start("client->master", master_addrs[0]).await?,
            Proxy::start("client->backup", master_addrs[1]).await?,
        ];
        let ttl = humantime::format_duration(config.lease_ttl).to_string();
        let mut masters = Vec::new();
        for (i, role) in ["master", "backup"].into_iter().enumerate() {
            let mut args = vec![
                role.to_string(),
                format!("--id={role}"),
                format!("--listen={}", master_addrs[i]),
                format!("--advertise={}", client_links[i].address()),
                format!("--log-dir={}", log_dir.display()),
                format!("--slaves={}", config.slaves),
                format!("--replication-factor={}", config.replication_factor),
                format!("--lease-ttl={ttl}"),
                format!("--slave-timeout={ttl}"),
                // Small segments and eager compaction: rolls and compactions
                // all through the run, beside takeovers.
                format!("--segment-bytes={}", config.segment_bytes),
                "--compact-segments=2".to_string(),
                "--metrics-listen=none".to_string(),
            ];
            args.extend(config.broken.master_flag().map(str::to_string));
            let log = logs.join(format!("{role}.log"));
            masters.push(Process::new(role, &config.binary, args, log).with_env(env_for(role)?));
        }
        let mut slaves = Vec::new();
        let mut slave_ids = Vec::new();
        let mut to_slave = Vec::new();
        let mut from_slave = Vec::new();
        for s in 0..config.slaves {
            let id = format!("slave-{s}");
            let listen = free_addr()?;
            let inbound = Proxy::start(&format!("master->{id}"), listen).await?;
            let outbound = [
                Proxy::start(&format!("{id}->master"), master_addrs[0]).await?,
                Proxy::start(&format!("{id}->backup"), master_addrs[1]).await?,
            ];
            let args = vec![
                "slave".to_string(),
                format!("--id={id}"),
                format!("--listen={listen}"),
                format!("--advertise={}", inbound.address()),
                format!("--data-dir={}", dir.join(&id).display()),
                format!("--master={}", outbound[0].address()),
                format!("--backup={}", outbound[1].address()),
                format!("--heartbeat={}", humantime::format_duration(HEARTBEAT)),
                "--metrics-listen=none".to_string(),
            ];
            let log = logs.join(format!("{id}.log"));
            slaves.push(Process::new(&id, &config.binary, args, log).with_env(env_for(&id)?));
            slave_ids.push(id);
            to_slave.push(inbound);
            from_slave.push(outbound);
        }
        let [master, backup] = <[Process; 2]>::try_from(masters)
            .map_err(|_| anyhow::anyhow!("expected two master-capable processes"))?;
        let mut cluster = Cluster {
            masters: [master, backup],
            master_addrs,
            slaves,
            slave_ids,
            client_links,
            to_slave,
            from_slave,
            clocks,
        };
        cluster.masters[0].start()?;
        cluster.masters[1].start()?;
        for s in cluster.slaves.iter_mut() {
            s.start()?;
        }
        let bound = super::nemesis::READY_BOUND;
        if !cluster.wait_settled(bound).await {
            anyhow::bail!(
                "the cluster did not start within {bound:?}; see the logs in {}",
                logs.display()
            );
        }
        Ok(cluster)
    }

    /// Whether wall clocks can be shifted (libfaketime was found).
    pub fn has_clocks(&self) -> bool {
        self.clocks.is_some()
    }

    /// A client for one master-capable process, bypassing its proxy.
    pub fn direct_client(&self, m: usize) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![self.master_addrs[m].to_string()],
            timeout: Duration::from_millis(500),
            retry_for: Duration::ZERO,
        })
    }

    /// The active master's status (asked directly, bypassing proxies), and
    /// which of the two it is.
    pub async fn active(&self) -> Option<(usize, StatusReply)> {
        for i in 0..2 {
            if self.masters[i].paused() || !self.masters[i].running() {
                continue;
            }
            if let Ok(status) = self.direct_client(i).endpoint_status().await
                && status.role() == Some(Role::Active)
            {
                return Some((i, status));
            }
        }
        None
    }

    /// Slaves the active master does not list as live.
    pub async fn slaves_not_live(&self) -> HashSet<usize> {
        let Some((_, status)) = self.active().await else {
            return (0..self.slaves.len()).collect();
        };
        let live: HashSet<&str> = status
            .slaves
            .iter()
            .filter(|s| s.live)
            .map(|s| s.id.as_str())
            .collect();
        (0..self.slaves.len())
            .filter(|&i| !live.contains(self.slave_ids[i].as_str()))
            .collect()
    }

    /// Waits until a master is active with every slave live; false after
    /// `bound`.
    pub async fn wait_settled(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some((_, status)) = self.active().await
                && status.slaves.iter().filter(|s| s.live).count() >= self.slaves.len()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The proxy of one link.
    pub fn proxy(&self, link: Link) -> &Proxy {
        match link {
            Link::ClientToMaster(m) => &self.client_links[m],
            Link::MasterToSlave(s) => &self.to_slave[s],
            Link::SlaveToMaster(s, m) => &self.from_slave[s][m],
        }
    }

    fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        self.client_links
            .iter()
            .chain(self.to_slave.iter())
            .chain(self.from_slave.iter().flatten())
    }

    /// The name of a member.
    pub fn name(&self, member: Member) -> &str {
        match member {
            Member::Master(m) => &self.masters[m].name,
            Member::Slave(s) => &self.slaves[s].name,
        }
    }

    /// Shifts `member`'s wall clock by `offset_secs` from real time.
    fn set_clock(&self, name: &str, offset_secs: i64) {
        if let Some(clocks) = &self.clocks {
            let _ = std::fs::write(clocks.join(name), format!("{offset_secs:+}\n"));
        }
    }

    /// Injects `fault`.
    pub async fn inject(&mut self, fault: &Fault) {
        match fault {
            Fault::KillMaster { m, .. } => self.masters[*m].kill().await,
            Fault::KillSlave(s) => self.slaves[*s].kill().await,
            // A process that cannot be signalled is not running: nothing to
            // pause, and the history shows what the clients saw.
            Fault::Pause { m, .. } => {
                let _ = self.masters[*m].pause();
            }
            Fault::Link(link, mode) => self.proxy(*link).set(*mode),
            Fault::Clock {
                member,
                offset_secs,
            } => {
                let name = self.name(*member).to_string();
                self.set_clock(&name, *offset_secs);
            }
            Fault::KillDuringCompaction { m, after } => {
                // Start a compaction, then kill -9 while it (or the roll
                // that made it needed) is under way.
                let client = self.direct_client(*m);
                let compaction = tokio::spawn(async move { client.compact().await });
                tokio::time::sleep(*after).await;
                self.masters[*m].kill().await;
                compaction.abort();
            }
        }
    }

    /// Heals `fault`.
    pub fn heal(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillMaster { m, .. } | Fault::KillDuringCompaction { m, .. } => {
                self.masters[*m].start()
            }
            Fault::KillSlave(s) => self.slaves[*s].start(),
            Fault::Pause { m, .. } => {
                let _ = self.masters[*m].resume();
                Ok(())
            }
            Fault::Link(link, _) => {
                self.proxy(*link).set(Mode::Pass);
                Ok(())
            }
            Fault::Clock { member, .. } => {
                let name = self.name(*member).to_string();
                self.set_clock(&name, 0);
                Ok(())
            }
        }
    }

    /// Undoes every fault: continue, restart, pass, clocks back.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        for p in self.masters.iter_mut().chain(self.slaves.iter_mut()) {
            if p.paused() {
                let _ = p.resume();
            }
            if !p.running() {
                p.start()?;
            }
        }
        for proxy in self.proxies() {
            proxy.set(Mode::Pass);
        }
        let names: Vec<String> = self
            .masters
            .iter()
            .chain(self.slaves.iter())
            .map(|p| p.name.clone())
            .collect();
        for name in names {
            self.set_clock(&name, 0);
        }
        Ok(())
    }

    /// Stops every process and proxy.
    pub async fn stop(&mut self) {
        for p in self.masters.iter_mut().chain(self.slaves.iter_mut()) {
            if p.paused() {
                let _ = p.resume();
            }
            p.kill().await;
        }
        for proxy in self.proxies() {
            proxy.stop();
        }
    }

    /// Client endpoints: through the client→master proxies.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_links
            .iter()
            .map(|p| p.address().to_string())
            .collect()
    }

    /// A human name for the target of `fault`.
    pub fn target_name(&self, fault: &Fault) -> String {
        match fault {
            Fault::KillMaster { m, .. }
            | Fault::Pause { m, .. }
            | Fault::KillDuringCompaction { m, .. } => self.masters[*m].name.clone(),
            Fault::KillSlave(s) => self.slaves[*s].name.clone(),
            Fault::Link(link, mode) => format!("{} ({mode})", self.proxy(*link).name()),
            Fault::Clock {
                member,
                offset_secs,
            } => format!("{} ({offset_secs:+}s)", self.name(*member)),
        }
    }
}
