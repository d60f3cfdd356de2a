//! The nemesis suite in CI: a short seeded run of `dsm::chaos::nemesis`
//! against the `dsm` binary under test (master, backup, 5 slaves, every link
//! through a fault-injecting proxy, every wall clock shifted at will), whose
//! history must be linearizable; and, in builds with the test-only
//! `chaos-broken-*` features, runs against deliberately broken masters, each
//! of which must be caught:
//!
//! ```text
//! cargo test -p dsm --test nemesis                      # the real system
//! cargo test -p dsm --features chaos-broken-ack,chaos-broken-takeover,chaos-broken-read \
//!     --test nemesis broken                             # the checker catches each bug
//! ```
//!
//! Clock faults need libfaketime (Debian's `faketime`, installed by
//! `scripts/install-test-deps.sh`).
//!
//! `DSM_CHAOS_SEED` and `DSM_CHAOS_DURATION` (e.g. `2m`) override the seed and
//! the fault phase; the seed is printed either way, and a failing run leaves
//! its directory (member logs, `history.txt`, `faults.txt`) behind.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Cluster, Options, bounded};
use dsm::chaos::nemesis::{self, NemesisConfig, Summary};
use dsm::chaos::proxy::Mode;
#[cfg(any(
    feature = "chaos-broken-ack",
    feature = "chaos-broken-takeover",
    feature = "chaos-broken-read"
))]
use dsm::chaos::{faults::Focus, nemesis::Broken};

/// Seed of the CI run (any fixed value: CI must be reproducible).
const CI_SEED: u64 = 20_240_601;

fn config(name: &str, default_duration: Duration) -> (NemesisConfig, tempfile::TempDir) {
    let seed = std::env::var("DSM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEED);
    let duration = std::env::var("DSM_CHAOS_DURATION")
        .ok()
        .and_then(|s| humantime::parse_duration(&s).ok())
        .unwrap_or(default_duration);
    let dir = tempfile::Builder::new()
        .prefix(&format!("dsm-nemesis-{name}-"))
        .tempdir()
        .expect("temporary directory");
    eprintln!(
        "{name}: seed {seed}, {duration:?} of faults, in {}",
        dir.path().display()
    );
    let mut config = NemesisConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dsm")),
        dir.path().to_path_buf(),
        seed,
    );
    config.duration = duration;
    (config, dir)
}

/// Runs of a broken build before the checker is said to miss its bug. A bug
/// shows only in some interleavings (a master woken from a pause may notice
/// it was deposed before it answers what it received while paused), so one
/// run can see nothing; each attempt takes the next seed.
#[cfg(any(
    feature = "chaos-broken-ack",
    feature = "chaos-broken-takeover",
    feature = "chaos-broken-read"
))]
const CATCH_ATTEMPTS: u64 = 4;

/// Runs the nemesis with a hard bound on the whole run.
async fn run(config: NemesisConfig) -> Summary {
    let bound = config.duration + Duration::from_secs(240);
    let summary = tokio::time::timeout(bound, nemesis::run(config))
        .await
        .expect("the nemesis run exceeded its time bound")
        .expect("the nemesis could not start the cluster");
    eprintln!("{}", summary.render());
    summary
}

/// The claim (single-key linearizability, no acknowledged WRITE lost) under
/// kill -9 (during compactions too), SIGSTOPs shorter than the lease and of
/// 6-10 s with READs and WRITEs sent to the paused master, link faults, wall
/// clocks shifted forward and backward by more than the lease, fresh keys
/// (NOT_FOUND read), compare-and-sets, DELETEs, counters incremented by
/// compare-and-set and concurrent compactions: every key's history is
/// linearizable, no increment is lost and a WRITE succeeds soon after
/// healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_seeded_run_is_linearizable() {
    assert!(
        dsm::chaos::cluster::libfaketime().is_some(),
        "clock faults need libfaketime: run scripts/install-test-deps.sh (Debian's faketime)"
    );
    let (config, dir) = config("good", Duration::from_secs(60));
    let summary = run(config).await;
    if !summary.passed() {
        let kept = dir.keep();
        panic!(
            "nemesis run failed (seed {}); details kept in {}:\n{}",
            summary.seed,
            kept.display(),
            summary.failures.join("\n")
        );
    }
    let drawn = |kind: &str| summary.faults.get(kind).copied().unwrap_or(0);
    assert!(
        drawn("clock forward") + drawn("clock backward") > 0,
        "no clock fault"
    );
    assert!(drawn("SIGSTOP active master 6-10 s") > 0, "no long pause");
    assert!(summary.pinned_ops > 0, "nothing sent to a paused master");
    assert!(summary.compactions > 0, "no concurrent compaction");
    let counts = &summary.analysis.counts;
    assert!(
        counts.read_not_found > 0,
        "fresh keys never read as NOT_FOUND"
    );
    assert!(counts.cas_ok > 0, "no compare-and-set acknowledged");
    assert!(counts.cas_refused > 0, "no compare-and-set refused");
    assert!(counts.delete_ok > 0, "no DELETE acknowledged");
    assert!(
        summary.counters.iter().all(|c| c.acked > 0),
        "a counter was never incremented: {:?}",
        summary.counters
    );
}

/// A deterministic single-link fault through the harness's proxies: a
/// blackholed master→slave link makes the master drop that slave (after the
/// slave timeout) and place WRITEs elsewhere; once healed, the slave rejoins
/// and is repaired. No READ ever returns an older value than acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_slave_link_is_routed_around_and_heals() {
    bounded(async {
        let cluster = Cluster::start(Options {
            slave_link_proxies: true,
            ..Options::default()
        })
        .await;
        let client = cluster.client();
        client.write(b"k", b"before").await.expect("first write");
        cluster.slave_links[0].set(Mode::Blackhole);
        // WRITEs that pick slave-0 time out on it; the master drops it and
        // uses the other slaves. Keep writing until that happened.
        let mut last = String::new();
        let mut dropped = false;
        for i in 0..40 {
            last = format!("during-{i}");
            client
                .write(b"k", last.as_bytes())
                .await
                .expect("writes go on with one slave cut off");
            let (read, _) = client.read(b"k").await.expect("read").expect("key exists");
            assert_eq!(read, last.as_bytes(), "a READ went back in time");
            let status = client.status().await.expect("status");
            if status.slaves.iter().any(|x| x.id == "slave-0" && !x.live) {
                dropped = true;
                break;
            }
        }
        assert!(
            dropped,
            "slave-0 stayed live behind a blackhole\n{}",
            cluster.logs()
        );
        cluster.slave_links[0].set(Mode::Pass);
        cluster.wait_ready().await;
        let (read, _) = client.read(b"k").await.expect("read").expect("key exists");
        assert_eq!(read, last.as_bytes());
    })
    .await
}

/// Runs the nemesis against masters with the bug `broken`, drawing `focus`
/// faults for `duration`, and requires the history of one of
/// [`CATCH_ATTEMPTS`] runs to show it.
#[cfg(any(
    feature = "chaos-broken-ack",
    feature = "chaos-broken-takeover",
    feature = "chaos-broken-read"
))]
async fn assert_caught(name: &str, broken: Broken, focus: Focus, duration: Duration) {
    let mut missed = Vec::new();
    for attempt in 0..CATCH_ATTEMPTS {
        let (mut config, _dir) = config(name, duration);
        config.seed = config.seed.wrapping_add(attempt);
        if attempt > 0 {
            eprintln!("{name}: attempt {} with seed {}", attempt + 1, config.seed);
        }
        config.broken = broken;
        config.focus = focus;
        let summary = run(config).await;
        if !summary.analysis.violations.is_empty() {
            assert!(!summary.passed());
            return;
        }
        eprintln!("{name}: seed {} saw no violation", summary.seed);
        missed.push(summary.seed);
    }
    panic!("the checker missed {broken:?} in {CATCH_ATTEMPTS} runs (seeds {missed:?})");
}

/// The checker is shown to work on a real bug: masters started with
/// `--chaos-broken-ack` acknowledge a WRITE before any slave stored it, so a
/// READ right after the acknowledgement can return the previous value.
#[cfg(feature = "chaos-broken-ack")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_ack_is_caught() {
    assert_caught(
        "broken-ack",
        Broken::Ack,
        Focus::Mixed,
        Duration::from_secs(15),
    )
    .await;
}

/// The clock-based takeover bug: a standby that judges the lease by comparing
/// wall clocks takes over while the master still serves, and records its cut
/// before fencing any slave, so the old master's acknowledged WRITEs after the
/// cut are lost. Clocks shifted by more than the lease must expose it.
#[cfg(feature = "chaos-broken-takeover")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_takeover_is_caught() {
    assert!(
        dsm::chaos::cluster::libfaketime().is_some(),
        "clock faults need libfaketime: run scripts/install-test-deps.sh (Debian's faketime)"
    );
    assert_caught(
        "broken-takeover",
        Broken::Takeover,
        Focus::ClockSkew,
        Duration::from_secs(25),
    )
    .await;
}

/// The unconfirmed NOT_FOUND bug: NOT_FOUND answered without confirming the
/// term, so a master paused past a takeover answers, when it wakes, that a key
/// its successor created does not exist.
#[cfg(feature = "chaos-broken-read")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_read_is_caught() {
    assert_caught(
        "broken-read",
        Broken::Read,
        Focus::LongPause,
        Duration::from_secs(25),
    )
    .await;
}
