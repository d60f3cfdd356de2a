//! The nemesis: a real [`Cluster`] under concurrent clients and random
//! faults drawn from a seeded RNG ([`super::faults`]); the history the clients
//! observed ([`super::history`]) is checked afterwards ([`super::analysis`]).
//!
//! The workload: the clients of `chaos::workload` (READs, WRITEs,
//! compare-and-sets and DELETEs of hot keys, fresh keys, the counters of
//! [`super::counters`]), compactions asked of both masters all the time
//! beside the masters' own, and, during every long pause of the active
//! master, the *pinned* clients of `chaos::pinned`, which send the paused
//! master READs and WRITEs on connections it had open, for keys its successor
//! wrote. At the end each counter is checked ([`check_counter`]).
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::analysis::{self, Analysis};
use super::cluster::Cluster;
use super::counters::{COUNTERS, Counter, check_counter};
use super::faults::{self, Budget, Fault, Focus, Targets};
use super::history::{self, Recorder};
use super::pinned::{PINNED_TIMEOUT, Pinned, PinnedClient};
use super::workload::{Workload, client_loop, read, write};
use crate::client::{Client, ClientConfig};

/// Longest wait for a WRITE to succeed once every fault is healed.
pub const HEAL_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for the cluster to start or settle.
pub const READY_BOUND: Duration = Duration::from_secs(60);
/// Longest wait, between episodes, for slaves to rejoin.
const SETTLE_BOUND: Duration = Duration::from_secs(5);
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
    let workload = Arc::new(Workload::new(
        (0..config.keys.max(1)).map(|k| format!("k{k}")).collect(),
    ));
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
        tokio::task::spawn_blocking(move || analysis::analyse(&ops, budget))
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
