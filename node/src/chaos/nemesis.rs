//! The nemesis: a real cluster (master, backup, slaves: `dsm` processes on
//! loopback, every network link through a [`Proxy`]), concurrent clients on
//! a few keys writing unique values, and random faults drawn from a seeded
//! RNG. The history is checked afterwards (see [`super::history`]).
//!
//! A run:
//! 1. start the proxies and the processes; wait until the master serves with
//!    every slave live;
//! 2. start the clients; after a warm-up (so that enough operations complete
//!    before the first fault for the run to mean something), run *episodes*
//!    until the duration is spent: draw one or two faults that fit the fault
//!    model, inject them, heal each after its own hold time, pause;
//! 3. stop the clients, heal everything, and require a WRITE to succeed
//!    within [`HEAL_BOUND`]; wait for the cluster to settle; READ every key
//!    (these final reads check that no acknowledged WRITE was lost);
//! 4. check the history.
//!
//! The fault model is DESIGN §4's claim: at most `slaves - r` slaves and one
//! of master/backup fail at a time. A slave counts as down when it is killed,
//! when one of its links is faulty, or when the active master does not list
//! it live (restarted, not yet registered); master/backup faults (kill -9,
//! SIGSTOP shorter or longer than the lease, client→master link faults) hit
//! one of the two at a time.
//!
//! The seed fixes the fault schedule (kinds, targets, hold times) and the
//! clients' choices, not the thread interleavings: a replay reproduces the
//! same faults, usually the same failure.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::history::{self, Analysis, Call, Completion, Recorder};
use super::proxy::{Mode, Proxy};
use crate::client::{Client, ClientConfig, ClientError};
use crate::proto::StatusReply;

/// Longest wait for a WRITE to succeed once every fault is healed.
pub const HEAL_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for the cluster to start or settle.
const READY_BOUND: Duration = Duration::from_secs(60);
/// Longest wait, between episodes, for slaves to rejoin.
const SETTLE_BOUND: Duration = Duration::from_secs(5);
/// Slave heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// The `dsm` binary to start members from.
    pub binary: PathBuf,
    /// Directory for the shared log, slave data, member logs and the report.
    pub dir: PathBuf,
    /// Seed of every random choice.
    pub seed: u64,
    /// How long faults are injected (the warm-up and final checks add to it).
    pub duration: Duration,
    /// Fault-free time at the start.
    pub warmup: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys, `k0`…: few, so that operations on a key overlap.
    pub keys: usize,
    /// Slaves.
    pub slaves: usize,
    /// Replication factor `r` (a majority of `slaves` by default).
    pub replication_factor: usize,
    /// Master lease TTL (and the slave timeout).
    pub lease_ttl: Duration,
    /// Operations that must complete before the first fault.
    pub min_ops_before_faults: usize,
    /// Linearizability search budget per key (steps).
    pub checker_budget: u64,
    /// Start the masters with the deliberately broken acknowledgement
    /// (`--chaos-broken-ack`; only in builds with the `chaos-broken-ack`
    /// feature).
    pub broken_ack: bool,
    /// Print progress (faults as they happen) to stderr.
    pub verbose: bool,
}

impl NemesisConfig {
    /// Defaults for `binary`, writing into `dir`.
    pub fn new(binary: PathBuf, dir: PathBuf, seed: u64) -> Self {
        NemesisConfig {
            binary,
            dir,
            seed,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(3),
            clients: 4,
            keys: 5,
            slaves: 5,
            replication_factor: 3,
            lease_ttl: Duration::from_millis(1500),
            min_ops_before_faults: 20,
            checker_budget: super::checker::DEFAULT_BUDGET,
            broken_ack: false,
            verbose: true,
        }
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Summary {
    /// The seed, to replay the run.
    pub seed: u64,
    /// The history's check (operations by outcome, violations…).
    pub analysis: Analysis,
    /// Operations that completed successfully before the first fault.
    pub ok_before_first_fault: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Time from healing the last fault to the first acknowledged WRITE.
    pub heal_to_write: Option<Duration>,
    /// Everything that makes the run fail (violations included), in words.
    pub failures: Vec<String>,
    /// Where the member logs, the history and the fault timeline are.
    pub dir: PathBuf,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Summary {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report printed at the end of a run.
    pub fn render(&self) -> String {
        let c = &self.analysis.counts;
        let mut s = String::new();
        let _ = writeln!(s, "seed: {}", self.seed);
        let _ = writeln!(s, "run time: {:.1}s", self.elapsed.as_secs_f64());
        let _ = writeln!(s, "operations: {} in total", c.total());
        let _ = writeln!(
            s,
            "  read:  {} ok, {} failed, {} unknown",
            c.read_ok, c.read_fail, c.read_unknown
        );
        let _ = writeln!(
            s,
            "  write: {} ok, {} failed, {} unknown",
            c.write_ok, c.write_fail, c.write_unknown
        );
        let _ = writeln!(
            s,
            "  ok before the first fault: {}",
            self.ok_before_first_fault
        );
        let total: usize = self.faults.values().sum();
        let _ = writeln!(s, "faults injected: {total}");
        for (kind, n) in &self.faults {
            let _ = writeln!(s, "  {kind:<34} {n}");
        }
        match self.heal_to_write {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "first WRITE after healing: ok after {:.1}s",
                    d.as_secs_f64()
                );
            }
            None => {
                let _ = writeln!(s, "first WRITE after healing: FAILED");
            }
        }
        let a = &self.analysis;
        let _ = writeln!(
            s,
            "checker: {} keys in {:.2}s, {} inconclusive, {} WRITE(s) applied twice by client retries",
            a.keys,
            a.check_time.as_secs_f64(),
            a.inconclusive.len(),
            a.duplicate_writes
        );
        let _ = writeln!(s, "violations: {}", a.violations.len());
        for v in a.violations.iter().take(5) {
            let _ = writeln!(s, "- key {}: {}\n{}", v.key, v.what, v.excerpt);
        }
        for f in &self.failures {
            let _ = writeln!(s, "FAIL: {f}");
        }
        let _ = writeln!(s, "details: {}", self.dir.display());
        let _ = writeln!(s, "result: {}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}

/// One `dsm` process of the cluster.
struct Process {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Process {
    fn start(&mut self) -> anyhow::Result<()> {
        let child = crate::local::spawn_logged(
            &self.binary,
            &self.name,
            &self.args,
            &self.log,
            &[("RUST_LOG", "info")],
        )?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        self.paused = false;
    }

    fn pause(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        self.paused = true;
    }

    fn resume(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.paused = false;
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but continue it so that
        // nothing is left frozen if the kill is missed.
        self.signal(nix::sys::signal::Signal::SIGCONT);
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A network link of the cluster, each with its own proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Clients (and redirected slaves) to master-capable process `m`.
    ClientToMaster(usize),
    /// The active master to slave `s`.
    MasterToSlave(usize),
    /// Slave `s` to master-capable process `m`.
    SlaveToMaster(usize, usize),
}

impl Link {
    fn kind(self) -> &'static str {
        match self {
            Link::ClientToMaster(_) => "client->master",
            Link::MasterToSlave(_) => "master->slave",
            Link::SlaveToMaster(..) => "slave->master",
        }
    }

    /// The slave this link isolates, if any.
    fn slave(self) -> Option<usize> {
        match self {
            Link::ClientToMaster(_) => None,
            Link::MasterToSlave(s) | Link::SlaveToMaster(s, _) => Some(s),
        }
    }
}

/// One injected fault, and how to heal it.
#[derive(Clone, Debug)]
enum Fault {
    /// kill -9 of master-capable process `m` (active or standby), restart.
    KillMaster { m: usize, active: bool },
    /// kill -9 of a slave, restart.
    KillSlave(usize),
    /// SIGSTOP of the active master, SIGCONT.
    Pause { m: usize, long: bool },
    /// A proxy mode on one link, back to pass.
    Link(Link, Mode),
}

impl Fault {
    fn kind(&self) -> String {
        match self {
            Fault::KillMaster { active: true, .. } => "kill -9 active master".into(),
            Fault::KillMaster { active: false, .. } => "kill -9 standby master".into(),
            Fault::KillSlave(_) => "kill -9 slave".into(),
            Fault::Pause { long: false, .. } => "SIGSTOP active master < lease".into(),
            Fault::Pause { long: true, .. } => "SIGSTOP active master > lease".into(),
            Fault::Link(link, mode) => {
                let mode = match mode {
                    Mode::Delay(_) => "delay",
                    Mode::Blackhole => "blackhole",
                    Mode::Drop => "drop",
                    Mode::Reset => "reset",
                    Mode::Pass => "pass",
                };
                format!("{mode} {}", link.kind())
            }
        }
    }
}

/// The cluster under test.
struct Cluster {
    /// Master (0) and backup (1).
    masters: [Process; 2],
    /// Their real addresses, for the observer.
    master_addrs: [SocketAddr; 2],
    slaves: Vec<Process>,
    slave_ids: Vec<String>,
    /// Client→master proxies; the masters advertise these.
    client_links: [Proxy; 2],
    /// Master→slave proxies; slaves advertise these.
    to_slave: Vec<Proxy>,
    /// Slave→master proxies: `[slave][master]`.
    from_slave: Vec<[Proxy; 2]>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?)
}

impl Cluster {
    async fn start(config: &NemesisConfig) -> anyhow::Result<Cluster> {
        let dir = &config.dir;
        let log_dir = dir.join("log");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
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
                "--metrics-listen=none".to_string(),
            ];
            if config.broken_ack {
                args.push("--chaos-broken-ack".to_string());
            }
            masters.push(Process {
                name: role.to_string(),
                binary: config.binary.clone(),
                args,
                log: logs.join(format!("{role}.log")),
                child: None,
                paused: false,
            });
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
            slaves.push(Process {
                name: id.clone(),
                binary: config.binary.clone(),
                args: vec![
                    "slave".to_string(),
                    format!("--id={id}"),
                    format!("--listen={listen}"),
                    format!("--advertise={}", inbound.address()),
                    format!("--data-dir={}", dir.join(&id).display()),
                    format!("--master={}", outbound[0].address()),
                    format!("--backup={}", outbound[1].address()),
                    format!("--heartbeat={}", humantime::format_duration(HEARTBEAT)),
                    "--metrics-listen=none".to_string(),
                ],
                log: logs.join(format!("{id}.log")),
                child: None,
                paused: false,
            });
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
        };
        cluster.masters[0].start()?;
        cluster.masters[1].start()?;
        for s in cluster.slaves.iter_mut() {
            s.start()?;
        }
        if !cluster.wait_settled(READY_BOUND).await {
            anyhow::bail!(
                "the cluster did not start within {READY_BOUND:?}; see the logs in {}",
                logs.display()
            );
        }
        Ok(cluster)
    }

    /// The active master's status (asked directly, bypassing proxies), and
    /// which of the two it is.
    async fn active(&self) -> Option<(usize, StatusReply)> {
        for (i, addr) in self.master_addrs.iter().enumerate() {
            if self.masters[i].paused || !self.masters[i].running() {
                continue;
            }
            let client = Client::new(ClientConfig {
                endpoints: vec![addr.to_string()],
                timeout: Duration::from_millis(500),
                retry_for: Duration::ZERO,
            });
            if let Ok(status) = client.endpoint_status().await
                && status.role == "active"
            {
                return Some((i, status));
            }
        }
        None
    }

    /// Slaves the active master does not list as live.
    async fn slaves_not_live(&self) -> HashSet<usize> {
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
    async fn wait_settled(&self, bound: Duration) -> bool {
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

    fn proxy(&self, link: Link) -> &Proxy {
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

    async fn inject(&mut self, fault: &Fault) {
        match fault {
            Fault::KillMaster { m, .. } => self.masters[*m].kill9().await,
            Fault::KillSlave(s) => self.slaves[*s].kill9().await,
            Fault::Pause { m, .. } => self.masters[*m].pause(),
            Fault::Link(link, mode) => self.proxy(*link).set(*mode),
        }
    }

    fn heal(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillMaster { m, .. } => self.masters[*m].start(),
            Fault::KillSlave(s) => self.slaves[*s].start(),
            Fault::Pause { m, .. } => {
                self.masters[*m].resume();
                Ok(())
            }
            Fault::Link(link, _) => {
                self.proxy(*link).set(Mode::Pass);
                Ok(())
            }
        }
    }

    /// Undoes every fault: continue, restart, pass.
    fn heal_all(&mut self) -> anyhow::Result<()> {
        for p in self.masters.iter_mut().chain(self.slaves.iter_mut()) {
            if p.paused {
                p.resume();
            }
            if !p.running() {
                p.start()?;
            }
        }
        for proxy in self.proxies() {
            proxy.set(Mode::Pass);
        }
        Ok(())
    }

    /// Stops every process and proxy.
    async fn stop(&mut self) {
        for p in self.masters.iter_mut().chain(self.slaves.iter_mut()) {
            if p.paused {
                p.resume();
            }
            p.kill9().await;
        }
        for proxy in self.proxies() {
            proxy.stop();
        }
    }

    /// Client endpoints: through the client→master proxies.
    fn endpoints(&self) -> Vec<String> {
        self.client_links
            .iter()
            .map(|p| p.address().to_string())
            .collect()
    }
}

/// Faults available to an episode given what is already down.
struct Budget {
    /// One master/backup fault at a time.
    master_side_free: bool,
    /// Slaves down or faulty.
    slaves_down: HashSet<usize>,
    /// At most this many slaves down (`slaves - r`).
    max_slaves_down: usize,
}

fn pick_fault(
    rng: &mut StdRng,
    budget: &mut Budget,
    active: Option<usize>,
    slaves: usize,
) -> Option<Fault> {
    // Weights: slave kills and link faults are the most common.
    for _ in 0..8 {
        let roll = rng.random_range(0..100);
        let fault = match roll {
            0..=14 => Fault::KillSlave(rng.random_range(0..slaves)),
            15..=24 => match active {
                Some(m) => Fault::KillMaster { m, active: true },
                None => continue,
            },
            25..=31 => match active {
                Some(m) => Fault::KillMaster {
                    m: 1 - m,
                    active: false,
                },
                None => continue,
            },
            32..=41 => match active {
                Some(m) => Fault::Pause { m, long: false },
                None => continue,
            },
            42..=53 => match active {
                Some(m) => Fault::Pause { m, long: true },
                None => continue,
            },
            _ => {
                let link = match rng.random_range(0..3) {
                    0 => Link::ClientToMaster(rng.random_range(0..2)),
                    1 => Link::MasterToSlave(rng.random_range(0..slaves)),
                    _ => Link::SlaveToMaster(rng.random_range(0..slaves), rng.random_range(0..2)),
                };
                let mode = match rng.random_range(0..4) {
                    0 => Mode::Blackhole,
                    1 => Mode::Delay(Duration::from_millis(rng.random_range(20..=600))),
                    2 => Mode::Drop,
                    _ => Mode::Reset,
                };
                Fault::Link(link, mode)
            }
        };
        let slave = match &fault {
            Fault::KillSlave(s) => Some(*s),
            Fault::Link(link, _) => link.slave(),
            _ => None,
        };
        let master_side = matches!(
            fault,
            Fault::KillMaster { .. }
                | Fault::Pause { .. }
                | Fault::Link(Link::ClientToMaster(_), _)
        );
        if master_side && !budget.master_side_free {
            continue;
        }
        if let Some(s) = slave {
            // Never a second fault on a slave already down (killed, faulty
            // link, not yet rejoined), and never more than the quorum allows.
            if budget.slaves_down.contains(&s) || budget.slaves_down.len() >= budget.max_slaves_down
            {
                continue;
            }
            budget.slaves_down.insert(s);
        }
        if master_side {
            budget.master_side_free = false;
        }
        return Some(fault);
    }
    None
}

/// How long a fault lasts.
fn hold_time(rng: &mut StdRng, fault: &Fault, ttl: Duration) -> Duration {
    let ttl_ms = ttl.as_millis() as u64;
    let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    match fault {
        // Well under the lease: the master must simply carry on.
        Fault::Pause { long: false, .. } => ms(ttl_ms / 8, ttl_ms * 3 / 5),
        Fault::Pause { long: true, .. } => ttl + ms(500, 2500),
        Fault::KillMaster { .. } | Fault::KillSlave(_) => ms(200, 3000),
        Fault::Link(..) => ms(500, 4000),
    }
}

/// One client: random READs and WRITEs of unique values on random keys.
async fn client_loop(
    process: usize,
    endpoints: Vec<String>,
    keys: Vec<String>,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    seed: u64,
) {
    let client = Client::new(ClientConfig {
        endpoints,
        timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(3),
    });
    let mut rng =
        StdRng::seed_from_u64(seed ^ (process as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let key = &keys[rng.random_range(0..keys.len())];
        if rng.random_bool(0.5) {
            read(&client, process, key, &recorder).await;
        } else {
            n += 1;
            let value = format!("c{process}.{n}");
            write(&client, process, key, &value, &recorder).await;
        }
    }
}

async fn read(client: &Client, process: usize, key: &str, recorder: &Recorder) -> bool {
    let index = recorder.invoke(process, key, Call::Read);
    let result = client.read(key.as_bytes()).await;
    let ok = result.is_ok();
    let completion = match result {
        Ok(found) => Completion::Read {
            found: found.map(|(v, version)| (String::from_utf8_lossy(&v).into_owned(), version)),
        },
        Err(e @ (ClientError::InvalidArgument(_) | ClientError::NotFound(_))) => Completion::Fail {
            error: e.to_string(),
        },
        Err(e) => Completion::Unknown { error: short(&e) },
    };
    recorder.complete(index, completion);
    ok
}

async fn write(
    client: &Client,
    process: usize,
    key: &str,
    value: &str,
    recorder: &Recorder,
) -> bool {
    let index = recorder.invoke(
        process,
        key,
        Call::Write {
            value: value.to_string(),
        },
    );
    let result = client.write(key.as_bytes(), value.as_bytes()).await;
    let ok = result.is_ok();
    let completion = match result {
        Ok(version) => Completion::Written { version },
        // Definite: the server refused the input. Nothing else is.
        Err(e @ ClientError::InvalidArgument(_)) => Completion::Fail {
            error: e.to_string(),
        },
        Err(e) => Completion::Unknown { error: short(&e) },
    };
    recorder.complete(index, completion);
    ok
}

fn short(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable { attempts, .. } => {
            format!("unavailable after {attempts} attempt(s)")
        }
        other => other.to_string().chars().take(120).collect(),
    }
}

/// Runs the nemesis (see the module documentation) and checks the history.
///
/// # Errors
/// When the cluster cannot be started; a run that finds violations is an
/// `Ok` summary that did not pass.
pub async fn run(config: NemesisConfig) -> anyhow::Result<Summary> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("cannot create {}", config.dir.display()))?;
    let mut cluster = Cluster::start(&config).await?;
    let result = drive(&config, &mut cluster).await;
    cluster.stop().await;
    let mut summary = result?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn drive(config: &NemesisConfig, cluster: &mut Cluster) -> anyhow::Result<Summary> {
    let say = |what: &str| {
        if config.verbose {
            eprintln!("{what}");
        }
    };
    let recorder = Arc::new(Recorder::new());
    let keys: Vec<String> = (0..config.keys.max(1)).map(|k| format!("k{k}")).collect();
    let stop = CancellationToken::new();
    // Clients stop however this function ends (error, interruption).
    let _stop_clients = stop.clone().drop_guard();
    let mut clients = Vec::new();
    for process in 0..config.clients.max(1) {
        clients.push(tokio::spawn(client_loop(
            process,
            cluster.endpoints(),
            keys.clone(),
            recorder.clone(),
            stop.clone(),
            config.seed,
        )));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut timeline = String::new();
    let stamp = |r: &Recorder| format!("{:>9.3}s", r.now() as f64 / 1e9);

    tokio::time::sleep(config.warmup).await;
    let first_fault = recorder.now();
    let end = Instant::now() + config.duration;
    let max_slaves_down = config.slaves.saturating_sub(config.replication_factor);
    while Instant::now() < end {
        // Slaves still rejoining after the last episode count as down.
        let _ = cluster.wait_settled(SETTLE_BOUND).await;
        let active = cluster.active().await.map(|(i, _)| i);
        let mut budget = Budget {
            master_side_free: true,
            slaves_down: cluster.slaves_not_live().await,
            max_slaves_down,
        };
        let count = if rng.random_bool(0.3) { 2 } else { 1 };
        let mut episode: Vec<(Instant, Fault)> = Vec::new();
        for _ in 0..count {
            let Some(fault) = pick_fault(&mut rng, &mut budget, active, config.slaves) else {
                continue;
            };
            let hold = hold_time(&mut rng, &fault, config.lease_ttl);
            cluster.inject(&fault).await;
            *faults.entry(fault.kind()).or_default() += 1;
            let line = format!(
                "{} inject {} on {} for {}ms",
                stamp(&recorder),
                fault.kind(),
                target_name(cluster, &fault),
                hold.as_millis()
            );
            say(&line);
            timeline += &line;
            timeline.push('\n');
            episode.push((Instant::now() + hold, fault));
        }
        episode.sort_by_key(|(at, _)| *at);
        for (at, fault) in episode {
            tokio::time::sleep_until(at).await;
            cluster.heal(&fault)?;
            let line = format!("{} heal   {}", stamp(&recorder), fault.kind());
            say(&line);
            timeline += &line;
            timeline.push('\n');
        }
        let quiet = Duration::from_millis(rng.random_range(300..=1500));
        tokio::time::sleep(quiet).await;
    }

    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    cluster.heal_all()?;
    let healed = Instant::now();
    say(&format!("{} healed everything", stamp(&recorder)));

    let mut failures = Vec::new();
    // A WRITE must succeed soon after the last fault healed.
    let final_client = Client::new(ClientConfig {
        endpoints: cluster.endpoints(),
        timeout: Duration::from_secs(2),
        retry_for: HEAL_BOUND,
    });
    let process = config.clients.max(1);
    let heal_to_write = if write(&final_client, process, "final", "final", &recorder).await {
        Some(healed.elapsed())
    } else {
        failures.push(format!(
            "no WRITE succeeded within {HEAL_BOUND:?} of healing every fault"
        ));
        None
    };
    if !cluster.wait_settled(READY_BOUND).await {
        failures.push(format!(
            "the cluster did not get every slave live within {READY_BOUND:?} of healing"
        ));
    }
    // Final reads: an acknowledged WRITE lost shows up here as a stale value.
    for key in &keys {
        if !read(&final_client, process, key, &recorder).await {
            failures.push(format!("the final READ of {key} failed after healing"));
        }
    }

    let ops = recorder.ops();
    let ok_before_first_fault = ops
        .iter()
        .filter(|op| op.completed < first_fault)
        .filter(|op| {
            matches!(
                op.completion,
                Completion::Read { .. } | Completion::Written { .. }
            )
        })
        .count();
    if ok_before_first_fault < config.min_ops_before_faults {
        failures.push(format!(
            "only {ok_before_first_fault} operation(s) completed before the first fault (want {})",
            config.min_ops_before_faults
        ));
    }
    if faults.is_empty() {
        failures.push("no fault was injected".to_string());
    }
    say(&format!("checking {} operations...", ops.len()));
    let budget = config.checker_budget;
    let analysis = {
        let ops = ops.clone();
        tokio::task::spawn_blocking(move || history::analyse(&ops, budget))
            .await
            .context("the checker panicked")?
    };
    for v in &analysis.violations {
        failures.push(format!("key {}: {}", v.key, v.what));
    }
    for key in &analysis.inconclusive {
        failures.push(format!(
            "key {key}: the linearizability check ran out of budget (inconclusive)"
        ));
    }
    write_report(&config.dir, &ops, &timeline);
    Ok(Summary {
        seed: config.seed,
        analysis,
        ok_before_first_fault,
        faults,
        heal_to_write,
        failures,
        dir: config.dir.clone(),
        elapsed: Duration::ZERO,
    })
}

fn target_name(cluster: &Cluster, fault: &Fault) -> String {
    match fault {
        Fault::KillMaster { m, .. } | Fault::Pause { m, .. } => cluster.masters[*m].name.clone(),
        Fault::KillSlave(s) => cluster.slaves[*s].name.clone(),
        Fault::Link(link, mode) => format!("{} ({mode})", cluster.proxy(*link).name()),
    }
}

/// Writes the history and the fault timeline next to the member logs.
fn write_report(dir: &Path, ops: &[history::Op], timeline: &str) {
    let all: Vec<&history::Op> = ops.iter().collect();
    let _ = std::fs::write(dir.join("history.txt"), history::excerpt(&all));
    let _ = std::fs::write(dir.join("faults.txt"), timeline);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_picks_respect_the_fault_model() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut budget = Budget {
                master_side_free: true,
                slaves_down: HashSet::new(),
                max_slaves_down: 2,
            };
            let mut picked = Vec::new();
            for _ in 0..4 {
                if let Some(f) = pick_fault(&mut rng, &mut budget, Some(0), 5) {
                    picked.push(f);
                }
            }
            let master_side = picked
                .iter()
                .filter(|f| {
                    matches!(
                        f,
                        Fault::KillMaster { .. }
                            | Fault::Pause { .. }
                            | Fault::Link(Link::ClientToMaster(_), _)
                    )
                })
                .count();
            assert!(master_side <= 1, "{picked:?}");
            let slaves: HashSet<usize> = picked
                .iter()
                .filter_map(|f| match f {
                    Fault::KillSlave(s) => Some(*s),
                    Fault::Link(l, _) => l.slave(),
                    _ => None,
                })
                .collect();
            assert!(slaves.len() <= 2, "{picked:?}");
        }
    }

    #[test]
    fn no_master_side_fault_without_a_known_active_master() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let mut budget = Budget {
                master_side_free: true,
                slaves_down: [0, 1].into_iter().collect(),
                max_slaves_down: 2,
            };
            if let Some(f) = pick_fault(&mut rng, &mut budget, None, 5) {
                assert!(!matches!(f, Fault::KillMaster { .. } | Fault::Pause { .. }));
                if let Some(s) = match &f {
                    Fault::KillSlave(s) => Some(*s),
                    Fault::Link(l, _) => l.slave(),
                    _ => None,
                } {
                    assert!(s <= 1, "slave {s} would be a third one down");
                }
            }
        }
    }

    #[test]
    fn pauses_are_shorter_and_longer_than_the_lease() {
        let mut rng = StdRng::seed_from_u64(3);
        let ttl = Duration::from_millis(1500);
        for _ in 0..200 {
            assert!(hold_time(&mut rng, &Fault::Pause { m: 0, long: false }, ttl) < ttl);
            assert!(hold_time(&mut rng, &Fault::Pause { m: 0, long: true }, ttl) > ttl);
        }
    }
}
