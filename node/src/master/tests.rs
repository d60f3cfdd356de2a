//! The master's rules in process, deterministically: masters on a real log
//! directory, slaves in memory behind the [`SlaveLink`] seam, a network
//! harness that cuts or freezes any master→slave link (raft-rs's in-memory
//! network is the model), and a paused clock. Each test is named after the
//! invariant it checks.
//!
//! A "paused" or "partitioned" old master is an old master whose links hang or
//! fail: it cannot tell, exactly as a SIGSTOPped process cannot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dsm_wire::metadata;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::error::MasterError;
use super::slave_link::{Connector, InventoryStream, SlaveLink};
use super::write::{ClientWrite, Mutation};
use super::{Master, MasterConfig, Role, Term};
use crate::limits::Limits;
use crate::proto::{GetReply, GetRequest, KeyVersion, PutReply, PutRequest};
use crate::security::Security;
use crate::version::{Expect, Version};
use crate::wal::{self, Origin};

/// What a link from one master to one slave does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    Up,
    /// Calls fail at once (connection refused).
    Down,
    /// Calls wait until the link changes (a frozen process, a blackhole).
    Frozen,
    /// PUTs wait until the link changes (a slave stuck storing); every other
    /// call passes.
    PutsFrozen,
}

/// A slave's durable state, as the real store keeps it.
#[derive(Debug, Default)]
struct SlaveState {
    epoch: u64,
    values: BTreeMap<Bytes, (Version, Option<Bytes>)>,
}

/// The in-memory network: slaves by address, and each master's links.
#[derive(Default)]
struct Network {
    slaves: Mutex<HashMap<String, Arc<Mutex<SlaveState>>>>,
    links: Mutex<HashMap<(String, String), watch::Sender<LinkState>>>,
}

impl Network {
    fn add_slave(&self, address: &str) {
        self.slaves
            .lock()
            .unwrap()
            .insert(address.to_string(), Arc::default());
    }

    fn link(&self, master: &str, slave: &str) -> watch::Receiver<LinkState> {
        self.links
            .lock()
            .unwrap()
            .entry((master.to_string(), slave.to_string()))
            .or_insert_with(|| watch::channel(LinkState::Up).0)
            .subscribe()
    }

    fn set(&self, master: &str, slave: &str, state: LinkState) {
        self.links
            .lock()
            .unwrap()
            .entry((master.to_string(), slave.to_string()))
            .or_insert_with(|| watch::channel(LinkState::Up).0)
            .send_replace(state);
    }

    fn set_all(&self, master: &str, state: LinkState) {
        let slaves: Vec<String> = self.slaves.lock().unwrap().keys().cloned().collect();
        for slave in slaves {
            self.set(master, &slave, state);
        }
    }

    fn epoch_of(&self, slave: &str) -> u64 {
        self.slaves.lock().unwrap()[slave].lock().unwrap().epoch
    }

    /// The slaves holding some version of `key`, in slave order.
    fn holders_of(&self, key: &str) -> Vec<&'static str> {
        let slaves = self.slaves.lock().unwrap();
        SLAVES
            .into_iter()
            .filter(|s| {
                slaves[*s]
                    .lock()
                    .unwrap()
                    .values
                    .contains_key(key.as_bytes())
            })
            .collect()
    }
}

struct MemConnector {
    master: String,
    net: Arc<Network>,
}

impl Connector for MemConnector {
    fn connect(&self, address: &str) -> Result<Arc<dyn SlaveLink>, Status> {
        let state = self
            .net
            .slaves
            .lock()
            .unwrap()
            .get(address)
            .cloned()
            .ok_or_else(|| Status::invalid_argument(format!("no slave at {address}")))?;
        Ok(Arc::new(MemLink {
            link: self.net.link(&self.master, address),
            state,
        }))
    }
}

#[derive(Debug)]
struct MemLink {
    link: watch::Receiver<LinkState>,
    state: Arc<Mutex<SlaveState>>,
}

impl MemLink {
    /// Waits while frozen (a PUT, `put`, also while PUTs are frozen), fails
    /// while down.
    async fn pass(&self, put: bool) -> Result<(), Status> {
        let mut link = self.link.clone();
        let state = *link
            .wait_for(|s| *s != LinkState::Frozen && !(put && *s == LinkState::PutsFrozen))
            .await
            .map_err(|_| Status::unavailable("network gone"))?;
        match state {
            LinkState::Down => Err(Status::unavailable("connection refused")),
            _ => Ok(()),
        }
    }
}

fn stale(epoch: u64, fenced: u64) -> Status {
    Status::failed_precondition(format!("stale epoch {epoch} < fenced epoch {fenced}"))
}

#[tonic::async_trait]
impl SlaveLink for MemLink {
    async fn put(&self, request: PutRequest) -> Result<PutReply, Status> {
        self.pass(true).await?;
        let mut s = self.state.lock().unwrap();
        if request.epoch < s.epoch {
            return Err(stale(request.epoch, s.epoch));
        }
        s.epoch = request.epoch;
        let version = Version::from(request.version.unwrap_or_default());
        let key = Bytes::from(request.key);
        let newer = s.values.get(&key).is_some_and(|(v, _)| *v >= version);
        if newer && !request.force {
            return Ok(PutReply { stored: false });
        }
        let value = (!request.tombstone).then(|| Bytes::from(request.value));
        s.values.insert(key, (version, value));
        Ok(PutReply { stored: true })
    }

    async fn get(&self, request: GetRequest) -> Result<GetReply, Status> {
        self.pass(false).await?;
        let mut s = self.state.lock().unwrap();
        if request.epoch < s.epoch {
            return Err(stale(request.epoch, s.epoch));
        }
        s.epoch = request.epoch;
        Ok(match s.values.get(&request.key[..]) {
            Some((version, value)) => GetReply {
                found: true,
                value: value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
                version: Some((*version).into()),
                deleted: value.is_none(),
            },
            None => GetReply::default(),
        })
    }

    async fn fence(&self, epoch: u64) -> Result<u64, Status> {
        self.pass(false).await?;
        let mut s = self.state.lock().unwrap();
        s.epoch = s.epoch.max(epoch);
        Ok(s.epoch)
    }

    async fn inventory(&self, epoch: u64) -> Result<InventoryStream, Status> {
        self.pass(false).await?;
        let s = self.state.lock().unwrap();
        if epoch < s.epoch {
            return Err(stale(epoch, s.epoch));
        }
        let entries: Vec<KeyVersion> = s
            .values
            .iter()
            .map(|(k, (v, value))| KeyVersion {
                key: k.to_vec(),
                version: Some((*v).into()),
                deleted: value.is_none(),
            })
            .collect();
        Ok(futures::stream::iter([Ok(entries)]).boxed())
    }
}

const SLAVES: [&str; 3] = ["s0", "s1", "s2"];

/// A log directory, the network, and the masters started on them.
struct Harness {
    dir: tempfile::TempDir,
    net: Arc<Network>,
    cancel: CancellationToken,
}

impl Harness {
    fn new() -> Harness {
        let net = Arc::new(Network::default());
        for s in SLAVES {
            net.add_slave(s);
        }
        Harness {
            dir: tempfile::tempdir().unwrap(),
            net,
            cancel: CancellationToken::new(),
        }
    }

    fn config(&self, id: &str, slaves: u32, replication_factor: u32) -> MasterConfig {
        MasterConfig {
            id: id.to_string(),
            advertise: format!("{id}:1"),
            log_dir: self.dir.path().join("log"),
            slaves,
            replication_factor,
            lease_ttl: Duration::from_secs(10),
            slave_timeout: Duration::from_secs(1),
            prefer_active: true,
            limits: Limits::default(),
            segment_bytes: 1 << 20,
            compact_segments: 1000,
            commit_window: Duration::ZERO,
            security: Security::default(),
        }
    }

    fn master(&self, config: MasterConfig) -> Arc<Master> {
        let connector = Arc::new(MemConnector {
            master: config.id.clone(),
            net: self.net.clone(),
        });
        Master::with_connector(config, connector).unwrap()
    }

    /// A master that takes over now (whatever the lease says: as a standby
    /// whose clock misjudged it would), with its role loop running.
    async fn take_over(&self, master: &Arc<Master>) -> Arc<Term> {
        let term = self.take_over_quietly(master).await;
        let (m, t, cancel) = (master.clone(), term.clone(), self.cancel.clone());
        tokio::spawn(async move { m.run_as_active(t, &cancel).await });
        wait_until(|| matches!(master.role(), Role::Active(_))).await;
        term
    }

    /// Like [`Harness::take_over`], but the master's lease loop never runs, so
    /// it never looks at the log directory for newer claims: only what its
    /// requests meet (fenced slaves) can tell it that it lost its term.
    async fn take_over_quietly(&self, master: &Arc<Master>) -> Arc<Term> {
        let mut reader = master.replay_from_scratch().await.unwrap();
        let term = master
            .try_takeover(&mut reader, None, 0, &self.cancel)
            .await
            .unwrap()
            .expect("the takeover went through");
        *super::lock(&master.role) = Role::Active(term.clone());
        let (m, t) = (master.clone(), term.clone());
        tokio::spawn(async move { t.barrier.drive(t.ended(), || m.confirm_round(&t)).await });
        tokio::spawn(master.clone().repair_loop(self.cancel.clone()));
        term
    }

    /// The first master of the cluster, with every slave registered and live.
    async fn first_master(&self) -> (Arc<Master>, Arc<Term>) {
        self.first_master_with(false).await
    }

    /// [`Harness::first_master`], whose lease loop never runs when `quiet`.
    async fn first_master_with(&self, quiet: bool) -> (Arc<Master>, Arc<Term>) {
        let a = self.master(self.config("a", 3, 2));
        let term = if quiet {
            self.take_over_quietly(&a).await
        } else {
            self.take_over(&a).await
        };
        for s in SLAVES {
            a.register_slave(s, s).await.unwrap();
        }
        wait_until(|| live(&a) == SLAVES.len()).await;
        (a, term)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn live(master: &Master) -> usize {
    super::lock(&master.slaves).placeable().len()
}

/// Polls `done` on the (paused) clock; panics after a virtual minute.
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within a virtual minute");
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn write(master: &Master, key: &str, value: &str) -> Result<Version, MasterError> {
    let written = master.write(bytes(key), bytes(value), None).await?;
    Ok(written.version.expect("a WRITE always writes a version"))
}

async fn read(master: &Master, key: &str) -> Result<Option<Bytes>, MasterError> {
    match master.read(bytes(key)).await {
        Ok((value, _)) => Ok(Some(value)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

/// A standby that takes over while the old master is alive and serving (its
/// clock ran ahead) loses nothing the old master acknowledged, and from the
/// moment it has fenced, the old master acknowledges nothing.
#[tokio::test(start_paused = true)]
async fn a_takeover_beside_a_live_master_loses_no_acknowledged_write() {
    let h = Harness::new();
    let (a, a_term) = h.first_master_with(true).await;
    for i in 0..20 {
        write(&a, &format!("k{i}"), "from-a").await.unwrap();
    }
    let b = h.master(h.config("b", 3, 2));
    let b_term = h.take_over(&b).await;
    assert!(b_term.epoch > a_term.epoch);
    // The old master does not know yet; its next WRITE meets a fenced slave.
    let late = write(&a, "late", "from-a").await;
    assert!(late.is_err(), "a deposed master acknowledged {late:?}");
    assert!(a_term.is_deposed(), "a fenced slave deposes the old master");
    wait_until(|| live(&b) == SLAVES.len()).await;
    for i in 0..20 {
        assert_eq!(
            read(&b, &format!("k{i}")).await.unwrap(),
            Some(bytes("from-a"))
        );
    }
    assert_eq!(read(&b, "late").await.unwrap(), None);
}

/// Fencing comes before the cut: a WRITE the old master logged and sent to
/// its slaves just before the takeover is either acknowledged (then the new
/// master's log read, after fencing, includes it) or refused by a fenced
/// slave; never acknowledged and then cut off.
#[tokio::test(start_paused = true)]
async fn a_write_in_flight_during_a_takeover_is_refused_or_kept() {
    let h = Harness::new();
    let (a, _) = h.first_master_with(true).await;
    write(&a, "k", "v1").await.unwrap();
    // The old master's WRITE is logged, then its puts stall on the network.
    h.net.set_all("a", LinkState::Frozen);
    let in_flight = {
        let a = a.clone();
        tokio::spawn(async move { write(&a, "k", "v2").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = h.master(h.config("b", 3, 2));
    h.take_over(&b).await;
    h.net.set_all("a", LinkState::Up);
    let outcome = in_flight.await.unwrap();
    assert!(
        outcome.is_err(),
        "acknowledged after a successor fenced: {outcome:?}"
    );
    wait_until(|| live(&b) == SLAVES.len()).await;
    let value = read(&b, "k").await.unwrap();
    // v2 reached the log before the successor read it: it may count (outcome
    // unknown to its client), but v1 is never lost.
    assert!(
        value == Some(bytes("v1")) || value == Some(bytes("v2")),
        "{value:?}"
    );
}

/// A master that lost its term answers no READ, not even NOT_FOUND, for a
/// key its successor created.
#[tokio::test(start_paused = true)]
async fn a_woken_master_answers_no_read_not_even_not_found() {
    let h = Harness::new();
    let (a, a_term) = h.first_master_with(true).await;
    write(&a, "old", "1").await.unwrap();
    // "Paused": the old master's links freeze, a successor takes over and
    // creates a key, then the old master wakes up with READs to answer.
    h.net.set_all("a", LinkState::Frozen);
    let b = h.master(h.config("b", 3, 2));
    h.take_over(&b).await;
    wait_until(|| live(&b) == SLAVES.len()).await;
    write(&b, "fresh", "new").await.unwrap();
    write(&b, "old", "2").await.unwrap();
    let fresh = {
        let a = a.clone();
        tokio::spawn(async move { read(&a, "fresh").await })
    };
    let old = {
        let a = a.clone();
        tokio::spawn(async move { read(&a, "old").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.net.set_all("a", LinkState::Up);
    let fresh = fresh.await.unwrap();
    assert!(fresh.is_err(), "stale answer for a fresh key: {fresh:?}");
    let old = old.await.unwrap();
    assert!(old.is_err(), "stale answer for an updated key: {old:?}");
    assert!(a_term.is_deposed());
    assert_eq!(read(&b, "fresh").await.unwrap(), Some(bytes("new")));
}

/// A master woken after a takeover that left exactly one holder of a key
/// unfenced answers nothing for it, whether its READ asks that holder (which
/// answers its Get with the old value), or asks the other holder, which hangs,
/// and falls back to the unfenced one. Repeated because the key's holders,
/// and the order a READ asks them in, are picked at random.
#[tokio::test(start_paused = true)]
async fn a_woken_master_reads_nothing_through_the_slave_its_successor_left_unfenced() {
    for asked_fails in [false, true].repeat(8) {
        let h = Harness::new();
        let (a, a_term) = h.first_master_with(true).await;
        write(&a, "k", "old").await.unwrap();
        let [unfenced, other_holder] = h.net.holders_of("k")[..] else {
            panic!("a WRITE of r = 2 has two holders");
        };
        let third = SLAVES
            .into_iter()
            .find(|s| !h.net.holders_of("k").contains(s));
        // The successor cannot reach `unfenced`, so it fences the other two
        // (all but r - 1) and overwrites the key there.
        h.net.set("b", unfenced, LinkState::Down);
        let b = h.master(h.config("b", 3, 2));
        h.take_over(&b).await;
        wait_until(|| live(&b) == SLAVES.len() - 1).await;
        write(&b, "k", "new").await.unwrap();
        assert_eq!(h.net.epoch_of(unfenced), a_term.epoch);
        // The old master knows nothing of it. Either it reads through
        // `unfenced` alone (it no longer counts the other holder live), or
        // the other holder's link hangs and it no longer counts the third
        // slave live (so that only `unfenced` can answer anything).
        let (dead, down) = if asked_fails {
            (
                third.expect("three slaves, two holders"),
                Some(other_holder),
            )
        } else {
            (other_holder, None)
        };
        {
            let mut slaves = super::lock(&a.slaves);
            let idx = slaves.idx_for(dead);
            slaves.mark_dead(idx);
        }
        if let Some(down) = down {
            // Frozen, not refused: its Get and Fence time out, after
            // `unfenced` has answered.
            h.net.set("a", down, LinkState::Frozen);
        }
        let old = read(&a, "k").await;
        assert!(
            old.is_err(),
            "stale answer through the unfenced holder: {old:?}"
        );
        // (With the other holder hanging, the round finds no second slave
        // to confirm and fails without learning of the successor.)
        assert!(asked_fails || a_term.is_deposed());
        assert_eq!(read(&b, "k").await.unwrap(), Some(bytes("new")));
    }
}

/// A WRITE logged and replicated whose answer was lost is retried after a
/// failover, after another client overwrote the key: the retry gets the
/// original version and is not applied again, so readers never see the old
/// value come back.
#[tokio::test(start_paused = true)]
async fn a_retry_after_failover_is_not_applied_again() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    let origin = ClientWrite {
        origin: Origin { client: 42, seq: 1 },
        answered_below: 1,
    };
    let first = a.write(bytes("k"), bytes("a"), Some(origin)).await.unwrap();
    assert!(!first.deduplicated);
    let b = h.master(h.config("b", 3, 2));
    h.take_over(&b).await;
    wait_until(|| live(&b) == SLAVES.len()).await;
    write(&b, "k", "d").await.unwrap();
    let retry = b.write(bytes("k"), bytes("a"), Some(origin)).await.unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.version, first.version);
    assert_eq!(read(&b, "k").await.unwrap(), Some(bytes("d")));
    // Exactly one record of that WRITE in the log.
    let mut reader = wal::LogReader::open(&b.config.log_dir).unwrap();
    let mut copies = 0;
    reader
        .poll(|r, _| copies += usize::from(r.origin == Some(origin.origin)))
        .unwrap();
    assert_eq!(copies, 1);
}

/// A retry of a WRITE that is in the log but reached too few slaves is
/// completed under its original version, once.
#[tokio::test(start_paused = true)]
async fn a_retry_of_a_write_short_of_its_quorum_completes_it_once() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    let origin = ClientWrite {
        origin: Origin { client: 7, seq: 1 },
        answered_below: 1,
    };
    // Two of three slaves die after the WRITE was checked and logged.
    h.net.set("a", "s1", LinkState::Frozen);
    h.net.set("a", "s2", LinkState::Frozen);
    let short = {
        let a = a.clone();
        tokio::spawn(async move { a.write(bytes("k"), bytes("v"), Some(origin)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.net.set("a", "s1", LinkState::Down);
    h.net.set("a", "s2", LinkState::Down);
    let short = short.await.unwrap();
    assert_eq!(short.unwrap_err().code(), Code::Unavailable);
    h.net.set_all("a", LinkState::Up);
    for s in SLAVES {
        a.register_slave(s, s).await.unwrap();
    }
    wait_until(|| live(&a) == SLAVES.len()).await;
    let retry = a.write(bytes("k"), bytes("v"), Some(origin)).await.unwrap();
    assert!(retry.deduplicated);
    let mut reader = wal::LogReader::open(&a.config.log_dir).unwrap();
    let mut versions = Vec::new();
    reader.poll(|r, _| versions.push(r.version)).unwrap();
    assert_eq!(
        versions,
        vec![retry.version.unwrap()],
        "applied exactly once"
    );
}

/// A takeover waits until at most `r - 1` members of the previous term are
/// unfenced: with 2 of 3 slaves unreachable and quorums of 2, it cannot
/// serve; one slave back is enough.
#[tokio::test(start_paused = true)]
async fn a_takeover_waits_until_no_quorum_of_the_old_term_is_unfenced() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    write(&a, "k", "v").await.unwrap();
    h.net.set("b", "s1", LinkState::Down);
    h.net.set("b", "s2", LinkState::Down);
    let b = h.master(h.config("b", 3, 2));
    let taking_over = {
        let (h_b, cancel) = (b.clone(), h.cancel.clone());
        tokio::spawn(async move {
            let mut reader = h_b.replay_from_scratch().await.unwrap();
            h_b.try_takeover(&mut reader, None, 0, &cancel).await
        })
    };
    wait_until(|| matches!(b.role(), Role::TakingOver { .. })).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        matches!(b.role(), Role::TakingOver { .. }),
        "served with one fence"
    );
    assert_eq!(h.net.epoch_of("s0"), 2, "s0 is fenced");
    h.net.set("b", "s1", LinkState::Up);
    let term = taking_over.await.unwrap().unwrap();
    assert!(term.is_some());
}

/// The fence covers the previous term's quorums with the previous term's
/// quorum size, whatever the new master is configured with: a successor
/// configured for 5 slaves and quorums of 3 still fences 2 of the old
/// term's 3 members (quorums of 2).
#[tokio::test(start_paused = true)]
async fn a_successor_fences_with_the_previous_terms_quorum_size() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    write(&a, "k", "v").await.unwrap();
    h.net.set("b", "s1", LinkState::Down);
    h.net.set("b", "s2", LinkState::Down);
    let b = h.master(h.config("b", 5, 3));
    let taking_over = {
        let (b, cancel) = (b.clone(), h.cancel.clone());
        tokio::spawn(async move {
            let mut reader = b.replay_from_scratch().await.unwrap();
            b.try_takeover(&mut reader, None, 0, &cancel).await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        matches!(b.role(), Role::TakingOver { .. }),
        "one fence of three members cannot cover quorums of two"
    );
    h.net.set("b", "s1", LinkState::Up);
    let term = taking_over.await.unwrap().unwrap().expect("took over");
    assert_eq!(term.replication_factor, 3);
}

/// The membership a successor reads is complete: a slave admitted after a
/// successor claimed its epoch is refused, and the old term ends.
#[tokio::test(start_paused = true)]
async fn a_slave_admitted_after_a_newer_claim_is_refused() {
    let h = Harness::new();
    h.net.add_slave("s3");
    let (a, a_term) = h.first_master().await;
    let claimed = super::term::claim_next_epoch(&a.config.log_dir, "b", 0).unwrap();
    assert_eq!(claimed, Some(a_term.epoch + 1));
    let refused = a.register_slave("s3", "s3").await;
    assert!(
        refused.is_err(),
        "admitted after a newer claim: {refused:?}"
    );
    assert!(a_term.is_deposed());
    assert_eq!(h.net.epoch_of("s3"), 0, "never fenced, never placed on");
}

/// Compaction's keep rule: a record superseded by a committed version may
/// go; one superseded only by a version that is not in the log for good (a
/// deposed master's late WRITE a takeover may cut off) is kept.
#[tokio::test(start_paused = true)]
async fn compaction_never_drops_the_latest_valid_record_for_an_uncommitted_one() {
    let h = Harness::new();
    let (a, a_term) = h.first_master().await;
    let v1 = write(&a, "k", "v1").await.unwrap();
    let record = |version, value: &str| wal::Record {
        version,
        key: bytes("k"),
        value: bytes(value),
        origin: None,
        tombstone: false,
    };
    let older = Version::new(v1.epoch, v1.seq - 1);
    assert!(
        !a.keeps(&a_term, &record(older, "v0")),
        "superseded by committed v1"
    );
    assert!(a.keeps(&a_term, &record(v1, "v1")));
    // The next WRITE is logged but never reaches a slave.
    h.net.set_all("a", LinkState::Down);
    assert!(write(&a, "k", "v2").await.is_err());
    assert!(
        a.keeps(&a_term, &record(v1, "v1")),
        "v1 stays: v2 is not committed"
    );
}

/// A retried WRITE's record is kept by compaction while the client may still
/// retry it, even once superseded.
#[tokio::test(start_paused = true)]
async fn compaction_keeps_a_record_its_client_may_still_retry() {
    let h = Harness::new();
    let (a, a_term) = h.first_master().await;
    let origin = Origin { client: 9, seq: 1 };
    let first = a
        .write(
            bytes("k"),
            bytes("a"),
            Some(ClientWrite {
                origin,
                answered_below: 1,
            }),
        )
        .await
        .unwrap();
    write(&a, "k", "b").await.unwrap();
    let record = wal::Record {
        version: first.version.unwrap(),
        key: bytes("k"),
        value: bytes("a"),
        origin: Some(origin),
        tombstone: false,
    };
    assert!(a.keeps(&a_term, &record));
    // Once the client says it was answered, it may go.
    a.write(
        bytes("other"),
        bytes("x"),
        Some(ClientWrite {
            origin: Origin { client: 9, seq: 2 },
            answered_below: 2,
        }),
    )
    .await
    .unwrap();
    assert!(!a.keeps(&a_term, &record));
}

fn mutation(key: &str, value: Option<&str>, expect: Option<Expect>) -> Mutation {
    Mutation {
        key: bytes(key),
        value: value.map(bytes),
        expect,
        client: None,
    }
}

/// The version a refused condition reports (`dsm-current-version`).
fn current_of(error: &MasterError) -> Option<String> {
    Status::from(error.clone())
        .metadata()
        .get(metadata::CURRENT_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Compare-and-set: of many conditional WRITEs expecting one version, sent
/// at once, exactly one applies; every other is refused with the winner's
/// version, so a client can retry from what is really there.
#[tokio::test(start_paused = true)]
async fn concurrent_compare_and_sets_of_one_version_let_one_win() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    let base = write(&a, "counter", "0").await.unwrap();
    let attempts: Vec<_> = (0..16)
        .map(|i| {
            let a = a.clone();
            let value = format!("from-{i}");
            tokio::spawn(async move {
                a.apply(mutation(
                    "counter",
                    Some(&value),
                    Some(Expect::Version(base)),
                ))
                .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(written) => winners.push(written.version.unwrap()),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                refused.push(current_of(&status));
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one compare-and-set applies");
    let winner = winners[0].to_string();
    assert!(
        refused
            .iter()
            .all(|c| c.as_deref() == Some(winner.as_str())),
        "refusals name the winner {winner}: {refused:?}"
    );
    let (value, version) = a.read(bytes("counter")).await.unwrap();
    assert_eq!(version, winners[0]);
    assert!(value.starts_with(b"from-"));
}

/// A failed condition is an observation of the key's latest logged version,
/// which may belong to a WRITE still replicating: it is answered only once
/// READs return that version too, or a READ after the refusal could return
/// the value the refusal said was replaced. The same for a DELETE finding
/// nothing to delete because a DELETE is still replicating.
#[tokio::test(start_paused = true)]
async fn a_refusal_is_answered_once_reads_see_what_it_observed() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    let v1 = write(&a, "k", "v1").await.unwrap();
    write(&a, "gone", "x").await.unwrap();
    // (key, what is replicating, the observer: value and condition).
    let cases = [
        ("k", Some("v2"), Some("v3"), Some(Expect::Version(v1))),
        ("gone", None, None, None),
    ];
    for (key, replicating, value, expect) in cases {
        // The WRITE (or DELETE) is logged; its puts stall on every slave,
        // while the term can still be confirmed.
        h.net.set_all("a", LinkState::PutsFrozen);
        let stalled = {
            let a = a.clone();
            tokio::spawn(async move { a.apply(mutation(key, replicating, None)).await })
        };
        wait_until(|| super::lock(&a.ordering.in_flight).contains_key(key.as_bytes())).await;
        let observed = {
            let a = a.clone();
            tokio::spawn(async move {
                let answer = a.apply(mutation(key, value, expect)).await;
                // What a READ would return, the moment the answer came.
                let indexed = super::lock(&a.index).get(key.as_bytes()).map(|m| m.version);
                (answer, indexed)
            })
        };
        // On the paused clock: time for an answer that does not wait for
        // the puts (the term is confirmed without them), well within the
        // slave timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.net.set_all("a", LinkState::Up);
        let written = stalled.await.unwrap().unwrap().version.unwrap();
        let (answer, indexed) = observed.await.unwrap();
        match answer {
            Err(MasterError::ConditionFailed { current, .. }) => {
                assert_eq!(current, Some(written), "{key}: the refusal names the WRITE");
            }
            Ok(nothing) => assert_eq!(nothing.version, None, "{key}: nothing to delete"),
            Err(other) => panic!("{key}: {other}"),
        }
        assert_eq!(
            indexed,
            Some(written),
            "{key}: answered before READs returned the version it observed"
        );
    }
}

/// DELETE: the key is gone for READ and LIST; deleting it again writes
/// nothing; IF ABSENT holds for a deleted key; a stale IF VERSION is
/// refused saying the key is absent (what a READ would say).
#[tokio::test(start_paused = true)]
async fn a_deleted_key_reads_as_absent_and_conditions_see_the_delete() {
    let h = Harness::new();
    let (a, _) = h.first_master().await;
    let v1 = write(&a, "k", "v1").await.unwrap();
    write(&a, "other", "x").await.unwrap();
    let deleted = a.apply(mutation("k", None, None)).await.unwrap();
    let tombstone = deleted.version.expect("deleting a key writes a tombstone");
    assert!(tombstone > v1);
    assert_eq!(read(&a, "k").await.unwrap(), None);
    let page = a.list(Bytes::new(), None, 0).await.unwrap();
    assert_eq!(page.keys, vec![(bytes("other"), page.keys[0].1)]);
    let again = a.apply(mutation("k", None, None)).await.unwrap();
    assert_eq!(again.version, None, "nothing to delete");
    let stale = a
        .apply(mutation("k", Some("v2"), Some(Expect::Version(v1))))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(current_of(&stale).as_deref(), Some("absent"));
    let created = a
        .apply(mutation("k", Some("v2"), Some(Expect::Absent)))
        .await
        .unwrap();
    assert!(created.version.unwrap() > tombstone);
    let exists = a
        .apply(mutation("k", Some("v3"), Some(Expect::Absent)))
        .await
        .unwrap_err();
    assert_eq!(
        current_of(&exists),
        Some(created.version.unwrap().to_string())
    );
    assert_eq!(read(&a, "k").await.unwrap(), Some(bytes("v2")));
}

/// Compaction drops a committed tombstone that is its key's latest version,
/// and every older record of the key with it; a tombstone not yet committed
/// stays, and so does the value it would hide.
#[tokio::test(start_paused = true)]
async fn compaction_drops_a_committed_tombstone_with_the_values_it_hides() {
    let h = Harness::new();
    let (a, a_term) = h.first_master().await;
    let v1 = write(&a, "k", "v1").await.unwrap();
    let tombstone = a
        .apply(mutation("k", None, None))
        .await
        .unwrap()
        .version
        .unwrap();
    let record = |version, tombstone| wal::Record {
        version,
        key: bytes("k"),
        value: if tombstone { Bytes::new() } else { bytes("v1") },
        origin: None,
        tombstone,
    };
    assert!(!a.keeps(&a_term, &record(v1, false)));
    assert!(!a.keeps(&a_term, &record(tombstone, true)));

    let v2 = write(&a, "k", "v2").await.unwrap();
    h.net.set_all("a", LinkState::Down);
    assert!(a.apply(mutation("k", None, None)).await.is_err());
    let mut reader = wal::LogReader::open(&a.config.log_dir).unwrap();
    let mut last = None;
    reader
        .poll(|r, _| last = Some((r.version, r.tombstone)))
        .unwrap();
    let (uncommitted, is_tombstone) = last.expect("the DELETE was logged");
    assert!(is_tombstone && uncommitted > v2);
    assert!(a.keeps(&a_term, &record(uncommitted, true)));
    assert!(
        a.keeps(&a_term, &record(v2, false)),
        "v2 stays: its tombstone is not committed"
    );
}
