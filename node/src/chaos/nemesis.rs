//! The nemesis: a real [`Cluster`] under concurrent clients and random
//! faults drawn from a seeded RNG ([`super::faults`]); the history the clients
//! observed is checked afterwards ([`super::history`]).
//!
//! The workload: concurrent clients on a few *hot* keys (so that operations on
//! a key overlap) and on *fresh* keys all through the run (each written once,
//! read by others, often before it exists: NOT_FOUND is read and checked), a
//! client retrying on its own (its retries are not separate operations:
//! WRITEs are exactly-once), compactions asked of both masters all the time
//! beside the masters' own, and, during every long pause of the active master,
//! READs and WRITEs sent to the paused master on connections it had open
//! (*pinned* clients that never fail over), for keys its successor wrote.
//!
//! A run:
//! 1. start the cluster; wait until the master serves with every slave live;
//! 2. start the clients; after a warm-up run *episodes* until the duration is
//!    spent: draw one or two faults, inject them, heal each after its own hold
//!    time, pause;
//! 3. stop the clients, heal everything, and require a WRITE to succeed
//!    within [`HEAL_BOUND`]; wait for the cluster to settle; READ every hot
//!    key and the fresh keys (a lost acknowledged WRITE shows up here);
//! 4. check the history.
//!
//! The seed fixes the fault schedule (kinds, targets, hold times) and the
//! clients' choices, not the thread interleavings: a replay reproduces the
//! same faults, usually the same failure.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use dsm_wire::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::faults::{self, Budget, Fault, Focus, Targets};
use super::history::{self, Analysis, Call, Completion, Recorder};
use crate::client::{Client, ClientConfig, ClientError};
use crate::proto::kv_client::KvClient;
use crate::proto::{ReadRequest, StatusRequest, WriteRequest};
use crate::version::Version;
use tonic::Code;
use tonic::transport::Channel;

/// Longest wait for a WRITE to succeed once every fault is healed.
pub const HEAL_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for the cluster to start or settle.
pub const READY_BOUND: Duration = Duration::from_secs(60);
/// Longest wait, between episodes, for slaves to rejoin.
const SETTLE_BOUND: Duration = Duration::from_secs(5);
/// Timeout of the pinned clients: longer than any pause, so that what a
/// paused master answers when it wakes is what they see.
const PINNED_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh keys remembered for reads by other clients.
const RECENT_FRESH: usize = 256;
/// Fresh keys read back at the end, at most (the most recent ones).
const FINAL_FRESH_READS: usize = 3000;

/// A deliberately broken master the nemesis must catch (test-only builds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Broken {
    /// The real thing.
    #[default]
    Nothing,
    /// `--chaos-broken-ack`: acknowledges before the quorum stored a WRITE.
    Ack,
    /// `--chaos-broken-takeover`: wall-clock lease expiry, cut before fencing.
    Takeover,
    /// `--chaos-broken-read`: NOT_FOUND without confirming the term.
    Read,
}

impl Broken {
    /// The hidden flag the masters are started with.
    pub fn master_flag(self) -> Option<&'static str> {
        match self {
            Broken::Nothing => None,
            Broken::Ack => Some("--chaos-broken-ack"),
            Broken::Takeover => Some("--chaos-broken-takeover"),
            Broken::Read => Some("--chaos-broken-read"),
        }
    }
}

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
    /// Hot keys, `k0`…: few, so that operations on a key overlap.
    pub keys: usize,
    /// Slaves.
    pub slaves: usize,
    /// Replication factor `r` (a majority of `slaves` by default).
    pub replication_factor: usize,
    /// Master lease TTL (and the slave timeout).
    pub lease_ttl: Duration,
    /// Log segment size of the masters: small, so that rolls and compactions
    /// happen all the time.
    pub segment_bytes: u64,
    /// Which faults to draw.
    pub focus: Focus,
    /// Shift members' wall clocks (needs libfaketime; skipped without it).
    pub clock_faults: bool,
    /// Operations that must complete before the first fault.
    pub min_ops_before_faults: usize,
    /// Linearizability search budget per key (steps).
    pub checker_budget: u64,
    /// Start the masters with a deliberate bug (test-only builds).
    pub broken: Broken,
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
            segment_bytes: 8192,
            focus: Focus::Mixed,
            clock_faults: true,
            min_ops_before_faults: 20,
            checker_budget: super::checker::DEFAULT_BUDGET,
            broken: Broken::Nothing,
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
    /// Whether wall clocks could be shifted (libfaketime found).
    pub clocks: bool,
    /// READs and WRITEs sent to a paused master on its open connections.
    pub pinned_ops: usize,
    /// Compactions asked of the masters by the nemesis.
    pub compactions: usize,
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
            "  read:  {} ok ({} not found), {} failed, {} unknown",
            c.read_ok, c.read_not_found, c.read_fail, c.read_unknown
        );
        let _ = writeln!(
            s,
            "  write: {} ok, {} failed, {} unknown",
            c.write_ok, c.write_fail, c.write_unknown
        );
        let _ = writeln!(
            s,
            "  sent to a paused master on open connections: {}",
            self.pinned_ops
        );
        let _ = writeln!(s, "  compactions asked: {}", self.compactions);
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
        if !self.clocks {
            let _ = writeln!(
                s,
                "  (no clock faults: libfaketime not found; install Debian's faketime)"
            );
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
            "checker: {} keys in {:.2}s, {} inconclusive",
            a.keys,
            a.check_time.as_secs_f64(),
            a.inconclusive.len(),
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

/// The keys clients share.
struct Workload {
    hot: Vec<String>,
    /// Fresh keys recently written (or being written), for others to read.
    recent: Mutex<VecDeque<String>>,
    /// Fresh keys whose WRITE was acknowledged, for the final reads.
    acked: Mutex<Vec<String>>,
}

impl Workload {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, key: &str) {
        let mut recent = Self::lock(&self.recent);
        if recent.len() == RECENT_FRESH {
            recent.pop_front();
        }
        recent.push_back(key.to_string());
    }

    fn recent_key(&self, rng: &mut StdRng) -> Option<String> {
        let recent = Self::lock(&self.recent);
        (!recent.is_empty()).then(|| recent[rng.random_range(0..recent.len())].clone())
    }
}

/// One client: READs and WRITEs of unique values on hot and fresh keys.
async fn client_loop(
    process: usize,
    endpoints: Vec<String>,
    workload: Arc<Workload>,
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
        n += 1;
        let value = format!("c{process}.{n}");
        match rng.random_range(0..100) {
            0..=34 => {
                let key = &workload.hot[rng.random_range(0..workload.hot.len())];
                read(&client, process, key, &recorder).await;
            }
            35..=59 => {
                let key = &workload.hot[rng.random_range(0..workload.hot.len())];
                write(&client, process, key, &value, &recorder).await;
            }
            60..=79 => {
                let key = format!("f{process}.{n}");
                workload.remember(&key);
                if write(&client, process, &key, &value, &recorder).await {
                    Workload::lock(&workload.acked).push(key);
                }
            }
            _ => {
                // A recent fresh key (maybe still being written), or one
                // nobody ever writes.
                let key = match workload.recent_key(&mut rng) {
                    Some(key) if rng.random_bool(0.9) => key,
                    _ => format!("never{process}.{n}"),
                };
                read(&client, process, &key, &recorder).await;
            }
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

/// A raw `Kv` client of one master: one attempt per call, no failover, no
/// leader hint followed, so its answers are that master's own.
#[derive(Clone)]
struct PinnedClient {
    kv: KvClient<Channel>,
}

impl PinnedClient {
    fn new(address: &str) -> anyhow::Result<PinnedClient> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .context("pinned client address")?
            .connect_timeout(Duration::from_secs(2));
        Ok(PinnedClient {
            kv: KvClient::new(endpoint.connect_lazy()),
        })
    }

    async fn read(&self, key: &str) -> Completion {
        let mut request = tonic::Request::new(ReadRequest {
            key: key.as_bytes().to_vec(),
        });
        request.set_timeout(PINNED_TIMEOUT);
        match self.kv.clone().read(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                Completion::Read {
                    found: Some((
                        String::from_utf8_lossy(&reply.value).into_owned(),
                        reply.version.map(Version::from).unwrap_or_default(),
                    )),
                }
            }
            Err(status) => pinned_outcome(status, true),
        }
    }

    async fn write(&self, key: &str, value: &str) -> Completion {
        let mut request = tonic::Request::new(WriteRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..WriteRequest::default()
        });
        request.set_timeout(PINNED_TIMEOUT);
        match self.kv.clone().write(request).await {
            Ok(reply) => Completion::Written {
                version: reply
                    .into_inner()
                    .version
                    .map(Version::from)
                    .unwrap_or_default(),
            },
            Err(status) => pinned_outcome(status, false),
        }
    }

    async fn status(&self) {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(PINNED_TIMEOUT);
        let _ = self.kv.clone().status(request).await;
    }
}

/// What a pinned call's error means for the history: NOT_FOUND is an answer,
/// a standby's refusal or bad input is a definite failure, the rest unknown.
fn pinned_outcome(status: tonic::Status, read: bool) -> Completion {
    match status.code() {
        Code::NotFound if read => Completion::Read { found: None },
        Code::FailedPrecondition | Code::InvalidArgument => Completion::Fail {
            error: status.message().to_string(),
        },
        _ => Completion::Unknown {
            error: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

/// Clients that talk to one master only and never fail over, with
/// connections kept open all through the run.
struct Pinned {
    clients: [PinnedClient; 2],
    /// Watches who is active, bypassing the proxies.
    observers: [Client; 2],
    /// Process ids of their operations in the history.
    process: usize,
}

impl Pinned {
    /// Keeps each pinned client's connection open (a status call every half
    /// second; one stuck on a paused master just waits).
    fn keep_open(&self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        self.clients
            .iter()
            .map(|client| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = client.status() => {}
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            })
            .collect()
    }

    /// During a long pause of master `m`, until `until`: once the other one
    /// serves, WRITE fresh keys through it, then send the paused master READs
    /// of those keys (and of hot keys) and WRITEs, on its open connection.
    /// Returns how many operations were sent to the paused master.
    async fn probe(
        &self,
        m: usize,
        until: Instant,
        workload: &Workload,
        recorder: &Arc<Recorder>,
        failover: &Client,
        n: u64,
    ) -> usize {
        let other = &self.observers[1 - m];
        loop {
            if Instant::now() + Duration::from_millis(1500) > until {
                return 0;
            }
            if other
                .endpoint_status()
                .await
                .is_ok_and(|s| s.role() == Some(Role::Active))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut fresh = Vec::new();
        for i in 0..5 {
            let key = format!("p{n}.{i}");
            if write(failover, self.process, &key, &format!("p{n}.{i}"), recorder).await {
                Workload::lock(&workload.acked).push(key.clone());
                fresh.push(key);
            }
        }
        if Instant::now() + Duration::from_millis(500) > until {
            return 0;
        }
        let paused = &self.clients[m];
        let mut sent = Vec::new();
        for key in fresh.iter().chain(workload.hot.iter()) {
            let (client, key, recorder) = (paused.clone(), key.clone(), recorder.clone());
            let process = self.process;
            sent.push(tokio::spawn(async move {
                let index = recorder.invoke(process, &key, Call::Read);
                recorder.complete(index, client.read(&key).await);
            }));
        }
        for i in 0..2 {
            let (client, recorder) = (paused.clone(), recorder.clone());
            let (key, process) = (format!("pw{n}.{i}"), self.process);
            sent.push(tokio::spawn(async move {
                let value = key.clone();
                let call = Call::Write {
                    value: value.clone(),
                };
                let index = recorder.invoke(process, &key, call);
                recorder.complete(index, client.write(&key, &value).await);
            }));
        }
        let ops = sent.len();
        for task in sent {
            let _ = task.await;
        }
        ops
    }
}

/// Asks both masters to compact, again and again, beside their own
/// automatic compactions; a paused master gets its requests when it wakes.
fn compaction_storm(
    cluster: &Cluster,
    stop: &CancellationToken,
    seed: u64,
) -> tokio::task::JoinHandle<usize> {
    let clients = [cluster.direct_client(0), cluster.direct_client(1)];
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc0_ffee);
        let mut asked = 0;
        while !stop.is_cancelled() {
            let both = clients.iter().map(|c| c.compact());
            let _ = futures::future::join_all(both).await;
            asked += 2;
            let pause = Duration::from_millis(rng.random_range(200..=600));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        asked
    })
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
    let workload = Arc::new(Workload {
        hot: (0..config.keys.max(1)).map(|k| format!("k{k}")).collect(),
        recent: Mutex::new(VecDeque::new()),
        acked: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    // Clients stop however this function ends (error, interruption).
    let _stop_clients = stop.clone().drop_guard();
    let mut clients = Vec::new();
    for process in 0..config.clients.max(1) {
        clients.push(tokio::spawn(client_loop(
            process,
            cluster.endpoints(),
            workload.clone(),
            recorder.clone(),
            stop.clone(),
            config.seed,
        )));
    }
    let final_process = config.clients.max(1);
    let links = cluster.endpoints();
    let pinned = Pinned {
        clients: [PinnedClient::new(&links[0])?, PinnedClient::new(&links[1])?],
        observers: [cluster.direct_client(0), cluster.direct_client(1)],
        process: final_process + 1,
    };
    let keep_open = pinned.keep_open(&stop);
    let probe_client = Client::new(ClientConfig {
        endpoints: cluster.endpoints(),
        timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(5),
    });
    let compactions = compaction_storm(cluster, &stop, config.seed);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut timeline = String::new();
    let stamp = |r: &Recorder| format!("{:>9.3}s", r.now() as f64 / 1e9);
    let mut pinned_ops = 0;

    tokio::time::sleep(config.warmup).await;
    let first_fault = recorder.now();
    let end = Instant::now() + config.duration;
    let max_slaves_down = config.slaves.saturating_sub(config.replication_factor);
    let mut episode_no = 0u64;
    while Instant::now() < end {
        episode_no += 1;
        // Slaves still rejoining after the last episode count as down.
        let _ = cluster.wait_settled(SETTLE_BOUND).await;
        let targets = Targets {
            active: cluster.active().await.map(|(i, _)| i),
            slaves: config.slaves,
            clocks: cluster.has_clocks(),
            lease_ttl: config.lease_ttl,
        };
        let mut budget = Budget {
            master_side_free: true,
            slaves_down: cluster.slaves_not_live().await,
            max_slaves_down,
        };
        let count = if rng.random_bool(0.3) { 2 } else { 1 };
        let mut episode: Vec<(Instant, Fault)> = Vec::new();
        for _ in 0..count {
            let Some(fault) = faults::pick_fault(&mut rng, &mut budget, targets, config.focus)
            else {
                continue;
            };
            let hold = faults::hold_time(&mut rng, &fault, config.lease_ttl);
            cluster.inject(&fault).await;
            *faults.entry(fault.kind()).or_default() += 1;
            let line = format!(
                "{} inject {} on {} for {}ms",
                stamp(&recorder),
                fault.kind(),
                cluster.target_name(&fault),
                hold.as_millis()
            );
            say(&line);
            timeline += &line;
            timeline.push('\n');
            episode.push((Instant::now() + hold, fault));
        }
        episode.sort_by_key(|(at, _)| *at);
        // A long pause: probe the paused master while it sleeps.
        if let Some((until, Fault::Pause { m, long: true })) = episode
            .iter()
            .find(|(_, f)| matches!(f, Fault::Pause { long: true, .. }))
        {
            let probing = pinned.probe(*m, *until, &workload, &recorder, &probe_client, episode_no);
            let heal_at = *until;
            tokio::pin!(probing);
            // The probe's operations complete only once the master is healed.
            let mut probed = None;
            tokio::select! {
                sent = &mut probing => probed = Some(sent),
                _ = tokio::time::sleep_until(heal_at) => {}
            }
            for (at, fault) in std::mem::take(&mut episode) {
                tokio::time::sleep_until(at).await;
                cluster.heal(&fault)?;
                let line = format!("{} heal   {}", stamp(&recorder), fault.kind());
                say(&line);
                timeline += &line;
                timeline.push('\n');
            }
            pinned_ops += match probed {
                Some(sent) => sent,
                None => tokio::time::timeout(PINNED_TIMEOUT, &mut probing)
                    .await
                    .unwrap_or(0),
            };
        }
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
    for c in clients.into_iter().chain(keep_open) {
        let _ = c.await;
    }
    let compactions = compactions.await.unwrap_or(0);
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
    let heal_to_write = if write(&final_client, final_process, "final", "final", &recorder).await {
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
    // Final reads: an acknowledged WRITE lost shows up here as a stale value
    // or as NOT_FOUND.
    let fresh: Vec<String> = {
        let acked = Workload::lock(&workload.acked);
        acked
            .iter()
            .rev()
            .take(FINAL_FRESH_READS)
            .cloned()
            .collect()
    };
    say(&format!(
        "reading back {} hot and {} fresh keys...",
        workload.hot.len(),
        fresh.len()
    ));
    for key in workload.hot.iter().chain(fresh.iter()) {
        if !read(&final_client, final_process, key, &recorder).await {
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
        clocks: cluster.has_clocks(),
        pinned_ops,
        compactions,
        heal_to_write,
        failures,
        dir: config.dir.clone(),
        elapsed: Duration::ZERO,
    })
}

/// Writes the history and the fault timeline next to the member logs.
fn write_report(dir: &Path, ops: &[history::Op], timeline: &str) {
    let all: Vec<&history::Op> = ops.iter().collect();
    let _ = std::fs::write(dir.join("history.txt"), history::excerpt(&all));
    let _ = std::fs::write(dir.join("faults.txt"), timeline);
}
