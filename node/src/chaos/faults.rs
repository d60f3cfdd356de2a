//! The nemesis's fault model: which faults exist, which may be combined, and
//! how long each lasts. Pure functions of a seeded RNG, unit-tested below.
//!
//! The model is the claim under test: at most `slaves - r` slaves and one of
//! master/backup fail at a time. A slave counts as down when it is killed,
//! when one of its links is faulty, or when the active master does not list it
//! live (restarted, not yet registered); master/backup faults (kill -9, kill
//! -9 during a compaction, SIGSTOP shorter or much longer than the lease,
//! client→master link faults) hit one of the two at a time.
//!
//! Clock faults are outside the budget: a member's wall clock moved forward or
//! backward by more than the lease TTL is not a failure, and nothing may
//! depend on it, so they are drawn on top of whatever else is happening.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::proxy::Mode;

/// A network link of the cluster, each with its own proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
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
    pub fn slave(self) -> Option<usize> {
        match self {
            Link::ClientToMaster(_) => None,
            Link::MasterToSlave(s) | Link::SlaveToMaster(s, _) => Some(s),
        }
    }
}

/// A process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// Master-capable process 0 (master) or 1 (backup).
    Master(usize),
    /// Slave `s`.
    Slave(usize),
}

/// One injected fault, and how to heal it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of master-capable process `m` (active or standby), restart.
    KillMaster {
        /// Which one.
        m: usize,
        /// Whether it was the active one.
        active: bool,
    },
    /// kill -9 of the active master `after` a compaction was asked of it
    /// (with small segments, rolls are constant too), restart.
    KillDuringCompaction {
        /// Which one.
        m: usize,
        /// How long after the Compact call.
        after: Duration,
    },
    /// kill -9 of a slave, restart.
    KillSlave(usize),
    /// SIGSTOP of the active master, SIGCONT. A long pause outlasts the
    /// lease many times over: a successor takes over and the nemesis sends
    /// the paused master READs and WRITEs on connections it already had.
    Pause {
        /// Which one.
        m: usize,
        /// Longer than the lease.
        long: bool,
    },
    /// A proxy mode on one link, back to pass.
    Link(Link, Mode),
    /// A member's wall clock shifted by this many seconds, back to 0.
    Clock {
        /// Whose clock.
        member: Member,
        /// The shift.
        offset_secs: i64,
    },
}

impl Fault {
    /// The fault's kind, as counted in the report.
    pub fn kind(&self) -> String {
        match self {
            Fault::KillMaster { active: true, .. } => "kill -9 active master".into(),
            Fault::KillMaster { active: false, .. } => "kill -9 standby master".into(),
            Fault::KillDuringCompaction { .. } => "kill -9 active master compacting".into(),
            Fault::KillSlave(_) => "kill -9 slave".into(),
            Fault::Pause { long: false, .. } => "SIGSTOP active master < lease".into(),
            Fault::Pause { long: true, .. } => "SIGSTOP active master 6-10 s".into(),
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
            Fault::Clock { offset_secs, .. } if *offset_secs > 0 => "clock forward".into(),
            Fault::Clock { .. } => "clock backward".into(),
        }
    }

    /// Whether this fault hits the master side (one at a time).
    fn master_side(&self) -> bool {
        matches!(
            self,
            Fault::KillMaster { .. }
                | Fault::KillDuringCompaction { .. }
                | Fault::Pause { .. }
                | Fault::Link(Link::ClientToMaster(_), _)
        )
    }

    /// The slave this fault takes down, if any.
    fn slave(&self) -> Option<usize> {
        match self {
            Fault::KillSlave(s) => Some(*s),
            Fault::Link(link, _) => link.slave(),
            _ => None,
        }
    }
}

/// Which faults a run draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Focus {
    /// Every kind, weighted (the default).
    #[default]
    Mixed,
    /// Clock shifts of the masters, more than the lease TTL either way.
    ClockSkew,
    /// Long SIGSTOPs of the active master.
    LongPause,
}

/// Faults available to an episode given what is already down.
#[derive(Debug)]
pub struct Budget {
    /// One master/backup fault at a time.
    pub master_side_free: bool,
    /// Slaves down or faulty.
    pub slaves_down: HashSet<usize>,
    /// At most this many slaves down (`slaves - r`).
    pub max_slaves_down: usize,
}

/// What the draw may target.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    /// The active master, if one is known.
    pub active: Option<usize>,
    /// Number of slaves.
    pub slaves: usize,
    /// Whether clocks can be shifted.
    pub clocks: bool,
    /// The lease TTL, which clock shifts must exceed.
    pub lease_ttl: Duration,
}

/// Draws a fault that fits the model and `budget` (which it updates), or
/// `None` when nothing fits.
pub fn pick_fault(
    rng: &mut StdRng,
    budget: &mut Budget,
    targets: Targets,
    focus: Focus,
) -> Option<Fault> {
    for _ in 0..8 {
        let Some(fault) = draw(rng, targets, focus) else {
            continue;
        };
        if fault.master_side() && !budget.master_side_free {
            continue;
        }
        if let Some(s) = fault.slave() {
            // Never a second fault on a slave already down (killed, faulty
            // link, not yet rejoined), and never more than the quorum allows.
            if budget.slaves_down.contains(&s) || budget.slaves_down.len() >= budget.max_slaves_down
            {
                continue;
            }
            budget.slaves_down.insert(s);
        }
        if fault.master_side() {
            budget.master_side_free = false;
        }
        return Some(fault);
    }
    None
}

fn draw(rng: &mut StdRng, targets: Targets, focus: Focus) -> Option<Fault> {
    let clock = |rng: &mut StdRng, member: Member| {
        let ttl = targets.lease_ttl.as_secs().max(1) as i64;
        let magnitude = rng.random_range(ttl + 1..=ttl + 10);
        let sign = if rng.random_bool(0.5) { 1 } else { -1 };
        Fault::Clock {
            member,
            offset_secs: sign * magnitude,
        }
    };
    let active = targets.active;
    match focus {
        Focus::ClockSkew => {
            // The standby's clock ahead, or the active's behind: the skew
            // that makes a wall-clock lease look expired while it is not.
            let m = rng.random_range(0..2);
            return targets.clocks.then(|| clock(rng, Member::Master(m)));
        }
        Focus::LongPause => return active.map(|m| Fault::Pause { m, long: true }),
        Focus::Mixed => {}
    }
    let roll = rng.random_range(0..100);
    Some(match roll {
        0..=11 => Fault::KillSlave(rng.random_range(0..targets.slaves)),
        12..=19 => Fault::KillMaster {
            m: active?,
            active: true,
        },
        20..=24 => Fault::KillMaster {
            m: 1 - active?,
            active: false,
        },
        25..=29 => Fault::KillDuringCompaction {
            m: active?,
            after: Duration::from_millis(rng.random_range(0..=30)),
        },
        30..=37 => Fault::Pause {
            m: active?,
            long: false,
        },
        38..=45 => Fault::Pause {
            m: active?,
            long: true,
        },
        46..=59 if targets.clocks => {
            let member = if rng.random_bool(0.75) {
                Member::Master(rng.random_range(0..2))
            } else {
                Member::Slave(rng.random_range(0..targets.slaves))
            };
            clock(rng, member)
        }
        _ => {
            let link = match rng.random_range(0..3) {
                0 => Link::ClientToMaster(rng.random_range(0..2)),
                1 => Link::MasterToSlave(rng.random_range(0..targets.slaves)),
                _ => {
                    Link::SlaveToMaster(rng.random_range(0..targets.slaves), rng.random_range(0..2))
                }
            };
            let mode = match rng.random_range(0..4) {
                0 => Mode::Blackhole,
                1 => Mode::Delay(Duration::from_millis(rng.random_range(20..=600))),
                2 => Mode::Drop,
                _ => Mode::Reset,
            };
            Fault::Link(link, mode)
        }
    })
}

/// How long a fault lasts.
pub fn hold_time(rng: &mut StdRng, fault: &Fault, ttl: Duration) -> Duration {
    let ttl_ms = ttl.as_millis() as u64;
    let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    match fault {
        // Well under the lease: the master must simply carry on.
        Fault::Pause { long: false, .. } => ms(ttl_ms / 8, ttl_ms * 3 / 5),
        // Long enough for a successor to take over and serve, and for the
        // nemesis to send the paused master work on its old connections.
        Fault::Pause { long: true, .. } => ms(6_000, 10_000),
        Fault::KillMaster { .. } | Fault::KillDuringCompaction { .. } | Fault::KillSlave(_) => {
            ms(200, 3000)
        }
        Fault::Link(..) => ms(500, 4000),
        Fault::Clock { .. } => ms(2_000, 8_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn targets(active: Option<usize>) -> Targets {
        Targets {
            active,
            slaves: 5,
            clocks: true,
            lease_ttl: Duration::from_millis(1500),
        }
    }

    #[test]
    fn fault_picks_respect_the_fault_model() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut kinds = HashSet::new();
        for _ in 0..2000 {
            let mut budget = Budget {
                master_side_free: true,
                slaves_down: HashSet::new(),
                max_slaves_down: 2,
            };
            let mut picked = Vec::new();
            for _ in 0..4 {
                if let Some(f) = pick_fault(&mut rng, &mut budget, targets(Some(0)), Focus::Mixed) {
                    kinds.insert(f.kind());
                    picked.push(f);
                }
            }
            let master_side = picked.iter().filter(|f| f.master_side()).count();
            assert!(master_side <= 1, "{picked:?}");
            let slaves: HashSet<usize> = picked.iter().filter_map(Fault::slave).collect();
            assert!(slaves.len() <= 2, "{picked:?}");
        }
        for kind in [
            "kill -9 active master compacting",
            "SIGSTOP active master 6-10 s",
            "clock forward",
            "clock backward",
        ] {
            assert!(kinds.contains(kind), "{kind} is never drawn: {kinds:?}");
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
            if let Some(f) = pick_fault(&mut rng, &mut budget, targets(None), Focus::Mixed) {
                assert!(
                    !matches!(
                        f,
                        Fault::KillMaster { .. }
                            | Fault::Pause { .. }
                            | Fault::KillDuringCompaction { .. }
                    ),
                    "{f:?}"
                );
                if let Some(s) = f.slave() {
                    assert!(s <= 1, "slave {s} would be a third one down");
                }
            }
        }
    }

    /// Clock faults cost nothing from the budget, and always exceed the TTL.
    #[test]
    fn clock_shifts_exceed_the_lease_and_fit_any_budget() {
        let mut rng = StdRng::seed_from_u64(11);
        let ttl = Duration::from_millis(1500);
        for _ in 0..500 {
            let mut budget = Budget {
                master_side_free: false,
                slaves_down: [0, 1].into_iter().collect(),
                max_slaves_down: 2,
            };
            let f = pick_fault(&mut rng, &mut budget, targets(Some(1)), Focus::ClockSkew)
                .expect("a clock fault always fits");
            let Fault::Clock { offset_secs, .. } = f else {
                panic!("{f:?}");
            };
            assert!(offset_secs.unsigned_abs() as u128 * 1000 > ttl.as_millis());
        }
        let no_clocks = Targets {
            clocks: false,
            ..targets(Some(1))
        };
        let mut budget = Budget {
            master_side_free: true,
            slaves_down: HashSet::new(),
            max_slaves_down: 2,
        };
        assert_eq!(
            pick_fault(&mut rng, &mut budget, no_clocks, Focus::ClockSkew),
            None
        );
    }

    #[test]
    fn pauses_are_shorter_than_the_lease_or_last_six_to_ten_seconds() {
        let mut rng = StdRng::seed_from_u64(3);
        let ttl = Duration::from_millis(1500);
        for _ in 0..200 {
            assert!(hold_time(&mut rng, &Fault::Pause { m: 0, long: false }, ttl) < ttl);
            let long = hold_time(&mut rng, &Fault::Pause { m: 0, long: true }, ttl);
            assert!(long >= Duration::from_secs(6) && long <= Duration::from_secs(10));
        }
    }
}
