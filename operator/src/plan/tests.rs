//! Tests of the day-2 rules: scaling, the rollout order and the leader label, played
//! out over the observations a reconcile would make.

use super::*;
use crate::crd::DsmClusterSpec;
use crate::fixtures::{
    POD_HASHES, active_status, bootstrapped, healthy, ready_slave_set, seat_pod, test_cluster,
    test_snapshot,
};
use crate::objects::master_pod_hash;

fn setup(spec: DsmClusterSpec) -> (DsmCluster, Names) {
    let dc = test_cluster(spec);
    let names = Names::of(&dc).expect("names");
    (dc, names)
}

#[test]
fn a_new_cluster_creates_everything_at_the_desired_size() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let plan = plan(&dc, &names, &Observed::default(), POD_HASHES);
    assert_eq!(plan.slave_replicas, 3);
    assert_eq!(plan.drain, None);
    assert_eq!(plan.master, SeatAction::Apply(Role::Standby));
    assert_eq!(plan.backup, SeatAction::Apply(Role::Standby));
}

#[test]
fn a_healthy_cluster_changes_nothing() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let plan = plan(&dc, &names, &healthy(&names, 3), POD_HASHES);
    assert_eq!(plan.master, SeatAction::Apply(Role::Active));
    assert_eq!(plan.backup, SeatAction::Apply(Role::Standby));
    assert!(plan.rollout.is_empty(), "{:?}", plan.rollout);
}

#[test]
fn a_missing_snapshot_claim_holds_back_only_the_pods_to_be_created() {
    let (dc, names) = setup(bootstrapped(test_snapshot()));
    let mut observed = healthy(&names, 3);
    observed.pods.remove(1);
    observed.missing_snapshot_claim = Some("test-snapshots".to_string());
    let plan = plan(&dc, &names, &observed, POD_HASHES);
    // The running master is reconciled as ever; the backup waits for the claim.
    assert_eq!(plan.master, SeatAction::Apply(Role::Active));
    assert_eq!(plan.backup, SeatAction::Wait);
}

#[test]
fn scale_down_drains_the_highest_slave_first() {
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = 1;
    let (dc, names) = setup(spec);
    let plan = plan(&dc, &names, &healthy(&names, 3), POD_HASHES);
    assert_eq!(plan.drain.as_deref(), Some("test-slave-2"));
    assert_eq!(plan.slave_replicas, 2, "one slave at a time");
}

#[test]
fn scale_down_never_goes_below_the_write_quorum() {
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = 2;
    // Admission forbids this; if it slips through, the quorum wins.
    spec.replication.factor = Some(3);
    let (dc, names) = setup(spec);
    let plan = plan(&dc, &names, &healthy(&names, 3), POD_HASHES);
    assert_eq!(plan.drain, None);
    assert_eq!(plan.slave_replicas, 3);
}

#[test]
fn failover_moves_the_active_label() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let mut observed = healthy(&names, 3);
    let mut backup = active_status(&names, 3);
    backup.epoch = 2;
    observed.master = None;
    observed.backup = Some(backup);
    let plan = plan(&dc, &names, &observed, POD_HASHES);
    assert_eq!(plan.master, SeatAction::Apply(Role::Standby));
    assert_eq!(plan.backup, SeatAction::Apply(Role::Active));
    assert_eq!(observed.active_seat(), Some((Seat::Backup, 2)));
}

#[test]
fn roles_stay_when_no_node_answers() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let mut observed = healthy(&names, 3);
    observed.master = None;
    let plan = plan(&dc, &names, &observed, POD_HASHES);
    assert_eq!(plan.master, SeatAction::Apply(Role::Active));
}

#[test]
fn image_rollout_replaces_the_standby_before_the_active_master() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let observed = healthy(&names, 3);
    let next = ["m2", "b2"];
    let first = plan(&dc, &names, &observed, next);
    assert_eq!(first.backup, SeatAction::Replace);
    assert_eq!(first.master, SeatAction::Wait);

    // The standby came back up to date and ready: now the active master goes.
    let mut observed = observed;
    observed.pods[1] = seat_pod(&names, Seat::Backup, "b2", Role::Standby, true);
    let second = plan(&dc, &names, &observed, next);
    assert_eq!(second.master, SeatAction::Replace);
    assert_eq!(second.backup, SeatAction::Apply(Role::Standby));
}

/// What the node accepts of `--slaves n --replication-factor r`
/// (`node/src/master/placement.rs`, `validate`).
fn node_accepts(n: i32, r: i32) -> bool {
    n >= 1 && (1..=n).contains(&r) && 2 * r > n
}

/// Master pod spec hashes and the `(slaves, factor)` each stands for.
type Configs = Vec<(String, (i32, i32))>;

/// A cluster of `replicas` slaves (factor unset) and the configuration each of its
/// master pods' spec hashes stands for.
fn sized(replicas: i32) -> (DsmCluster, Configs) {
    let mut spec = DsmClusterSpec::default();
    spec.slaves.replicas = replicas;
    let dc = test_cluster(spec);
    let names = Names::of(&dc).expect("names");
    let config = (replicas, dc.spec.write_quorum());
    let hashes = [Seat::Master, Seat::Backup]
        .map(|seat| (master_pod_hash(&dc, &names, seat).expect("hash"), config));
    (dc, hashes.into())
}

/// A running cluster of `from` slaves, master active at epoch 1.
fn running_at(from: i32) -> Observed {
    let (dc, hashes) = sized(from);
    let names = Names::of(&dc).expect("names");
    Observed {
        slave_set: Some(ready_slave_set(from, from)),
        pods: vec![
            seat_pod(&names, Seat::Master, &hashes[0].0, Role::Active, true),
            seat_pod(&names, Seat::Backup, &hashes[1].0, Role::Standby, true),
        ],
        master: Some(active_status(&names, 1)),
        ..Observed::default()
    }
}

/// Plays the rollout of `dc` from `observed` to its end, doing what each plan says as
/// Kubernetes and the nodes would (a replaced active master hands over to the other
/// one; a replaced pod comes back ready with the desired spec). Checks at every step
/// that each master-capable pod runs a configuration the node accepts (`configs`
/// maps spec hashes to `(slaves, factor)`) and that one pod at most is replaced.
/// Returns what happened, in order.
fn play(dc: &DsmCluster, mut observed: Observed, configs: &[(String, (i32, i32))]) -> Vec<String> {
    let names = Names::of(dc).expect("names");
    let seats = [Seat::Master, Seat::Backup];
    let hashes = seats.map(|seat| master_pod_hash(dc, &names, seat).expect("hash"));
    let mut happened = Vec::new();
    for _ in 0..20 {
        for pod in &observed.pods {
            let hash = pod
                .annotations()
                .get(ANNOTATION_SPEC_HASH)
                .cloned()
                .unwrap_or_default();
            let (n, r) = configs
                .iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, config)| *config)
                .expect("a known spec hash");
            assert!(
                node_accepts(n, r),
                "{} runs --slaves {n} --replication-factor {r}",
                pod.name_any()
            );
        }
        let p = plan(dc, &names, &observed, [&hashes[0], &hashes[1]]);
        let current = observed
            .slave_set
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or_default();
        let replaced: Vec<usize> = (0..2)
            .filter(|&i| p.seat(seats[i]) == &SeatAction::Replace)
            .collect();
        assert!(replaced.len() <= 1, "both masters replaced at once: {p:?}");
        if p.slave_replicas == current && replaced.is_empty() {
            return happened;
        }
        if let Some(slave) = &p.drain {
            happened.push(format!("drain {slave}"));
        } else if p.slave_replicas != current {
            happened.push(format!("slaves {current} -> {}", p.slave_replicas));
        }
        observed.slave_set = Some(ready_slave_set(p.slave_replicas, p.slave_replicas));
        for i in replaced {
            let active = observed
                .active_seat()
                .map(|(seat, epoch)| (seat == seats[i], epoch));
            let name = names.seat(seats[i]);
            if let Some((true, epoch)) = active {
                happened.push(format!("replace {name} (active)"));
                let mut took_over = active_status(&names, epoch + 1);
                took_over.address = names.seat_address(seats[1 - i]);
                let (lost, gained) = match seats[i] {
                    Seat::Master => (&mut observed.master, &mut observed.backup),
                    Seat::Backup => (&mut observed.backup, &mut observed.master),
                };
                *lost = None;
                *gained = Some(took_over);
                happened.push(format!("failover to {}", names.seat(seats[1 - i])));
            } else {
                happened.push(format!("replace {name} (standby)"));
            }
            observed.pods[i] = seat_pod(&names, seats[i], &hashes[i], Role::Standby, true);
        }
    }
    panic!("the rollout never ended: {happened:?}");
}

#[test]
fn scaling_up_rolls_the_slaves_then_the_standby_then_the_active_master() {
    let (dc, mut configs) = sized(5);
    configs.extend(sized(3).1);
    let happened = play(&dc, running_at(3), &configs);
    assert_eq!(
        happened,
        [
            "slaves 3 -> 5",
            "replace test-backup (standby)",
            "replace test-master (active)",
            "failover to test-backup",
        ]
    );
}

#[test]
fn scaling_down_drains_then_rolls_the_standby_then_the_active_master() {
    let (dc, mut configs) = sized(3);
    configs.extend(sized(5).1);
    let happened = play(&dc, running_at(5), &configs);
    assert_eq!(
        happened,
        [
            "drain test-slave-4",
            "drain test-slave-3",
            "replace test-backup (standby)",
            "replace test-master (active)",
            "failover to test-backup",
        ]
    );
}

#[test]
fn a_failover_mid_rollout_leaves_the_old_master_to_go_as_the_standby() {
    let (dc, mut configs) = sized(5);
    configs.extend(sized(3).1);
    let names = Names::of(&dc).expect("names");
    // The slaves and the standby are rolled out; then the old active master dies and
    // the up-to-date backup takes over before the operator replaced the master.
    let mut observed = running_at(3);
    observed.slave_set = Some(ready_slave_set(5, 5));
    let backup_hash = master_pod_hash(&dc, &names, Seat::Backup).expect("hash");
    observed.pods[1] = seat_pod(&names, Seat::Backup, &backup_hash, Role::Active, true);
    let mut took_over = active_status(&names, 2);
    took_over.address = names.seat_address(Seat::Backup);
    observed.master = None;
    observed.backup = Some(took_over);
    // No second failover: the outdated master is the standby now.
    assert_eq!(
        play(&dc, observed, &configs),
        ["replace test-master (standby)"]
    );
}

#[test]
fn masters_wait_for_slaves_to_roll_out() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let mut observed = healthy(&names, 3);
    observed.slave_set = Some(ready_slave_set(3, 2));
    let plan = plan(&dc, &names, &observed, ["m2", "b2"]);
    assert_eq!(plan.master, SeatAction::Wait);
    assert_eq!(plan.backup, SeatAction::Wait);
}

#[test]
fn the_active_master_waits_for_a_ready_standby() {
    let (dc, names) = setup(DsmClusterSpec::default());
    let mut observed = healthy(&names, 3);
    observed.pods[1] = seat_pod(&names, Seat::Backup, "b1", Role::Standby, false);
    let plan = plan(&dc, &names, &observed, ["m2", "b1"]);
    assert_eq!(plan.master, SeatAction::Wait);
}

#[test]
fn backup_disabled_removes_the_backup_pod() {
    let mut spec = DsmClusterSpec::default();
    spec.backup.enabled = false;
    let (dc, names) = setup(spec);
    let plan = plan(&dc, &names, &healthy(&names, 3), POD_HASHES);
    assert_eq!(plan.backup, SeatAction::Remove);
    let empty = super::plan(&dc, &names, &Observed::default(), POD_HASHES);
    assert_eq!(empty.backup, SeatAction::Absent);
}

#[test]
fn without_backup_an_outdated_master_is_replaced_once_slaves_are_ready() {
    let mut spec = DsmClusterSpec::default();
    spec.backup.enabled = false;
    let (dc, names) = setup(spec);
    let mut observed = healthy(&names, 3);
    observed.pods.truncate(1);
    let plan = plan(&dc, &names, &observed, ["m2", "b2"]);
    assert_eq!(plan.master, SeatAction::Replace);
}
