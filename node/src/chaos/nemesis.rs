//! The nemesis: a real [`Cluster`] under concurrent clients and random
//! faults drawn from a seeded RNG ([`super::faults`]); the history the clients
//! observed is checked afterwards ([`super::history`]).
//!
//! The workload: concurrent clients on a few *hot* keys (so that operations on
//! a key overlap) and on *fresh* keys all through the run (each written once,
//! read by others, often before it exists: NOT_FOUND is read and checked), a
//! client retrying on its own (its retries are not separate operations:
//! WRITEs and DELETEs are exactly-once), compactions asked of both masters all
//! the time beside the masters' own, and, during every long pause of the
//! active master, READs and WRITEs sent to the paused master on connections it
//! had open (*pinned* clients that never fail over), for keys its successor
//! wrote. On hot keys, beside READs and WRITEs of unique values, a few
//! operations are a READ followed by a compare-and-set (CAS) of a unique value
//! expecting the version just read (or an absent key), and a few DELETE the
//! key (rarely, so READs mostly find values). On two *counter* keys, `n0` and
//! `n1`, clients increment: READ `n:…` (absent is 0), then CAS
//! `n+1:c<process>.<k>` expecting the version read; every READ and CAS is in
//! the history. At the end each counter must hold at least the acknowledged
//! increments and at most those plus the ones of unknown outcome, and no two
//! acknowledged increments may have written the same count: either would be a
//! lost increment ([`check_counter`]).
//!
//! A run:
//! 1. start the cluster; wait until the master serves with every slave live;
//! 2. start the clients; after a warm-up run *episodes* until the duration is
//!    spent: draw one or two faults, inject them, heal each after its own hold
//!    time, pause;
//! 3. stop the clients, heal everything, and require a WRITE to succeed
//!    within [`HEAL_BOUND`]; wait for the cluster to settle; READ every hot
//!    key, the counters and the fresh keys (a lost acknowledged WRITE shows up
//!    here);
//! 4. check the history and the counters.
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
use crate::version::{Expect, Version};
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
/// Keys incremented by compare-and-set.
const COUNTERS: [&str; 2] = ["n0", "n1"];

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
    /// The compare-and-set counters, checked.
    pub counters: Vec<Counter>,
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
            "  cas:   {} ok, {} refused, {} failed, {} unknown",
            c.cas_ok, c.cas_refused, c.cas_fail, c.cas_unknown
        );
        let _ = writeln!(
            s,
            "  delete: {} ok, {} failed, {} unknown",
            c.delete_ok, c.delete_fail, c.delete_unknown
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
        for counter in &self.counters {
            let _ = writeln!(s, "cas counter {counter}");
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

/// The result of checking one compare-and-set counter ([`check_counter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The key.
    pub key: String,
    /// Increments acknowledged.
    pub acked: u64,
    /// Increments whose outcome is unknown (they may or may not count).
    pub unknown: u64,
    /// The count read back at the end; `None` when that READ failed (which
    /// fails the run on its own) or found something that is not a count.
    pub last: Option<u64>,
    /// What is wrong, in words; empty when the counter is right.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last {
            Some(n) => write!(f, "{} = {n}", self.key)?,
            None => write!(f, "{} = ?", self.key)?,
        }
        let verdict = if self.problems.is_empty() {
            "ok"
        } else {
            "FAIL"
        };
        write!(
            f,
            " ({} acked, {} unknown) {verdict}",
            self.acked, self.unknown
        )
    }
}

/// The count in a counter's value `n:c<process>.<k>`.
fn count_of(value: &str) -> Option<u64> {
    value.split_once(':')?.0.parse().ok()
}

/// Checks counter `key` against the history `ops`: with `S` increments
/// (compare-and-sets of the key) acknowledged and `U` of unknown outcome, the
/// final count `F` must satisfy `S <= F <= S + U`, and no two acknowledged
/// increments may have written the same count. `last` is what the final READ
/// found: `None` when it failed, `Some(None)` when the key does not exist
/// (a count of 0).
pub fn check_counter(key: &str, ops: &[history::Op], last: Option<Option<&str>>) -> Counter {
    let mut counter = Counter {
        key: key.to_string(),
        acked: 0,
        unknown: 0,
        last: None,
        problems: Vec::new(),
    };
    let mut wrote: BTreeMap<u64, usize> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.key == key) {
        let Call::CompareAndSet { value, .. } = &op.call else {
            continue;
        };
        match op.completion {
            Completion::Written { .. } => {
                counter.acked += 1;
                if let Some(n) = count_of(value)
                    && let Some(other) = wrote.insert(n, op.index)
                {
                    counter.problems.push(format!(
                        "counter {key}: increments #{other} and #{} were both acknowledged as {n}: an increment was lost",
                        op.index
                    ));
                }
            }
            Completion::Pending | Completion::Unknown { .. } => counter.unknown += 1,
            _ => {}
        }
    }
    counter.last = match last {
        None => None,
        Some(None) => Some(0),
        Some(Some(value)) => {
            let n = count_of(value);
            if n.is_none() {
                counter.problems.push(format!(
                    "counter {key} holds {value:?}, which is not a count"
                ));
            }
            n
        }
    };
    let (acked, unknown) = (counter.acked, counter.unknown);
    match counter.last {
        Some(n) if n < acked => counter.problems.push(format!(
            "counter {key}: {acked} increments acknowledged but the final value is {n}: an increment was lost"
        )),
        Some(n) if n > acked + unknown => counter.problems.push(format!(
            "counter {key}: the final value is {n} but only {acked} increments were acknowledged and {unknown} have an unknown outcome: an increment took effect twice, or a refused one took effect"
        )),
        _ => {}
    }
    counter
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

/// One client: READs, WRITEs of unique values, compare-and-sets and DELETEs
/// on hot keys, increments of the counters, READs and WRITEs of fresh keys.
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
        let hot = &workload.hot[rng.random_range(0..workload.hot.len())];
        match rng.random_range(0..100) {
            0..=29 => {
                read(&client, process, hot, &recorder).await;
            }
            30..=49 => {
                write(&client, process, hot, &value, &recorder).await;
            }
            50..=54 => {
                if let Some(found) = read(&client, process, hot, &recorder).await {
                    let expect = found.map(|(_, version)| version);
                    let call = Call::CompareAndSet { value, expect };
                    perform(&client, process, hot, call, &recorder).await;
                }
            }
            55..=57 => {
                perform(&client, process, hot, Call::Delete, &recorder).await;
            }
            58..=67 => {
                let key = COUNTERS[rng.random_range(0..COUNTERS.len())];
                increment(&client, process, key, &value, &recorder).await;
            }
            68..=84 => {
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

/// Runs `call` on `key` through `client`, recorded in the history; returns
/// how it ended.
async fn perform(
    client: &Client,
    process: usize,
    key: &str,
    call: Call,
    recorder: &Recorder,
) -> Completion {
    let index = recorder.invoke(process, key, call.clone());
    let k = key.as_bytes();
    let result = match call {
        Call::Read => client.read(k).await.map(|found| Completion::Read {
            found: found.map(|(v, version)| (String::from_utf8_lossy(&v).into_owned(), version)),
        }),
        Call::Write { value } => client
            .write(k, value.as_bytes())
            .await
            .map(|version| Completion::Written { version }),
        Call::CompareAndSet { value, expect } => {
            let expect = expect.map_or(Expect::Absent, Expect::Version);
            client
                .write_if(k, value.as_bytes(), expect)
                .await
                .map(|version| Completion::Written { version })
        }
        Call::Delete => client
            .delete(k)
            .await
            .map(|version| Completion::Deleted { version }),
    };
    let completion = match result {
        Ok(completion) => completion,
        // Definite: the condition did not hold, or the server refused the
        // input. Nothing else is.
        Err(ClientError::ConditionFailed { current }) => Completion::Refused { current },
        Err(e @ ClientError::InvalidArgument(_)) => Completion::Fail {
            error: e.to_string(),
        },
        Err(e) => Completion::Unknown { error: short(&e) },
    };
    recorder.complete(index, completion.clone());
    completion
}

/// READs `key`: what it found (`Some(None)`: not found), or `None` when the
/// READ failed or its outcome is unknown.
async fn read(
    client: &Client,
    process: usize,
    key: &str,
    recorder: &Recorder,
) -> Option<Option<(String, Version)>> {
    match perform(client, process, key, Call::Read, recorder).await {
        Completion::Read { found } => Some(found),
        _ => None,
    }
}

/// WRITEs `value` under `key`; true when acknowledged.
async fn write(
    client: &Client,
    process: usize,
    key: &str,
    value: &str,
    recorder: &Recorder,
) -> bool {
    let call = Call::Write {
        value: value.to_string(),
    };
    matches!(
        perform(client, process, key, call, recorder).await,
        Completion::Written { .. }
    )
}

/// Increments counter `key`: READs its count (absent is 0), then writes the
/// next count, tagged with the unique `tag`, by a compare-and-set expecting
/// the version read. A refused increment is just not counted.
async fn increment(client: &Client, process: usize, key: &str, tag: &str, recorder: &Recorder) {
    let Some(found) = read(client, process, key, recorder).await else {
        return;
    };
    let (count, expect) = match found {
        None => (0, None),
        Some((value, version)) => match count_of(&value) {
            Some(count) => (count, Some(version)),
            // Not a count: the history check reports a value nobody wrote,
            // and the counter check the final value.
            None => return,
        },
    };
    let call = Call::CompareAndSet {
        value: format!("{}:{tag}", count + 1),
        expect,
    };
    perform(client, process, key, call, recorder).await;
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
        "reading back {} hot keys, {} counters and {} fresh keys...",
        workload.hot.len(),
        COUNTERS.len(),
        fresh.len()
    ));
    let mut last_counts = BTreeMap::new();
    let counters = COUNTERS.iter().map(|k| k.to_string());
    for key in workload.hot.iter().cloned().chain(counters).chain(fresh) {
        let found = read(&final_client, final_process, &key, &recorder).await;
        if found.is_none() {
            failures.push(format!("the final READ of {key} failed after healing"));
        }
        if COUNTERS.contains(&key.as_str()) {
            last_counts.insert(key, found);
        }
    }

    let ops = recorder.ops();
    let ok_before_first_fault = ops
        .iter()
        .filter(|op| op.completed < first_fault)
        .filter(|op| op.completion.answered())
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
    let counters: Vec<Counter> = last_counts
        .iter()
        .map(|(key, found)| {
            let last = found
                .as_ref()
                .map(|found| found.as_ref().map(|(value, _)| value.as_str()));
            check_counter(key, &ops, last)
        })
        .collect();
    for counter in &counters {
        failures.extend(counter.problems.iter().cloned());
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
        counters,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A history of increments of `n0`: each `(count, completion)` is one
    /// compare-and-set writing that count.
    fn increments(outcomes: &[(u64, Completion)]) -> Vec<history::Op> {
        outcomes
            .iter()
            .enumerate()
            .map(|(index, (count, completion))| history::Op {
                index,
                process: index,
                key: "n0".into(),
                call: Call::CompareAndSet {
                    value: format!("{count}:c{index}.1"),
                    expect: None,
                },
                invoked: index as u64,
                completed: index as u64 + 1,
                completion: completion.clone(),
            })
            .collect()
    }

    fn acked(seq: u64) -> Completion {
        Completion::Written {
            version: Version::new(1, seq),
        }
    }

    fn unknown() -> Completion {
        Completion::Unknown {
            error: "timeout".into(),
        }
    }

    fn refused() -> Completion {
        Completion::Refused { current: None }
    }

    #[test]
    fn a_counter_between_acked_and_acked_plus_unknown_is_right() {
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (3, unknown()), (3, refused())]);
        for last in ["2:c1.1", "3:c2.1"] {
            let counter = check_counter("n0", &ops, Some(Some(last)));
            assert!(counter.problems.is_empty(), "{last}: {counter:?}");
            assert_eq!((counter.acked, counter.unknown), (2, 1));
        }
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(counter.to_string(), "n0 = 2 (2 acked, 1 unknown) ok");
        // The final READ failed: nothing to compare with (the run fails on
        // that alone).
        assert!(check_counter("n0", &ops, None).problems.is_empty());
        // No increment at all, and the key absent.
        assert!(check_counter("n0", &[], Some(None)).problems.is_empty());
    }

    #[test]
    fn a_final_count_below_the_acknowledged_increments_is_a_lost_increment() {
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (3, acked(3))]);
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(
            counter.problems,
            [
                "counter n0: 3 increments acknowledged but the final value is 2: an increment was lost"
            ]
        );
        assert!(counter.to_string().ends_with("FAIL"), "{counter}");
        let counter = check_counter("n0", &ops, Some(None));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
    }

    #[test]
    fn two_acknowledged_increments_of_one_count_are_a_lost_increment() {
        // The final count even matches, since a third one made up for it.
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (2, acked(3)), (3, unknown())]);
        let counter = check_counter("n0", &ops, Some(Some("3:c3.1")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        assert!(counter.problems[0].contains("#1 and #2"), "{counter:?}");
    }

    #[test]
    fn a_final_count_above_every_possible_increment_is_reported() {
        let ops = increments(&[(1, acked(1)), (2, refused())]);
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        let counter = check_counter("n0", &ops, Some(Some("garbage")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        assert_eq!(counter.last, None);
    }
}
