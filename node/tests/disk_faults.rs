//! A full log volume (the log is the source of truth): WRITEs
//! fail with a clear UNAVAILABLE error naming the cause, nothing
//! acknowledged is lost, and WRITEs resume by themselves once space returns
//! (the master steps down and recovers the log with a fresh writer:
//! `Term::log_append_failed`).
//!
//! Two ways to fill the volume:
//! - a real one: the log directory on a small tmpfs, filled with a ballast
//!   file (needs root, or CAP_SYS_ADMIN, to mount; CI runs as root);
//! - without privileges: `RLIMIT_FSIZE` lowered on the running master and
//!   backup with `prlimit(2)`, so every write past the first byte of any file
//!   (segments, epoch history, lease) fails with EFBIG, as on a volume with
//!   no free block.
//!
//! The failed fsync is covered by `crash_points.rs` (it needs the
//! `failpoints` feature to make an fsync fail).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Options, WAIT, bounded};

/// Values large enough that each WRITE needs new pages on the volume (a
/// small record could fit in the last, partly used page of a segment).
const VALUE_BYTES: usize = 16 * 1024;

/// A tmpfs mounted on a directory for the life of the guard.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `dir`, or says why it cannot.
    fn mount(dir: &Path, size: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The file that takes the space (not a segment name: the log ignores it).
    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Gives the space back.
    fn free(&self) {
        std::fs::remove_file(self.ballast()).expect("remove the ballast");
    }

    /// Fills the volume with a ballast file until it is full.
    fn fill(&self) {
        let path = self.ballast();
        let mut file = std::fs::File::create(&path).expect("create the ballast file");
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: detaches now even while the cluster's processes (dropped
        // after this guard) still hold files open, so the temporary
        // directory under it can then be removed.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tmpfs_log_volume_fails_writes_clearly_and_recovers() {
    bounded(async {
        let mut cluster = Cluster::prepare(Options::default());
        let tmpfs = match Tmpfs::mount(&cluster.log_dir(), 8 << 20) {
            Ok(tmpfs) => tmpfs,
            Err(why) => {
                // Not silent: the message says what did not run and which
                // test covers the same claim without privileges.
                eprintln!(
                    "SKIPPED full_tmpfs_log_volume: cannot mount a tmpfs ({why}); needs root. \
                     full_log_volume_by_file_size_limit covers the same path without root."
                );
                return;
            }
        };
        cluster.start_all();
        cluster.wait_ready().await;
        full_volume_scenario(
            &mut cluster,
            "No space left on device",
            |_| tmpfs.fill(),
            |_| tmpfs.free(),
        )
        .await;
        drop(tmpfs);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_log_volume_by_file_size_limit() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        full_volume_scenario(
            &mut cluster,
            "File too large",
            |cluster| set_file_size_limit(cluster, 1),
            |cluster| set_file_size_limit(cluster, nix::libc::RLIM_INFINITY),
        )
        .await;
    })
    .await;
}

/// A full volume while no WRITE comes: the master cannot renew its lease,
/// so the backup starts a takeover: it claims the next epoch (an empty file
/// still fits) and fences the slaves, but cannot save its membership. The
/// old master must not go on acknowledging in its old epoch once a newer
/// epoch is claimed: it steps down, and when space returns one of the two
/// takes over and nothing acknowledged is lost, even across a power cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_master_does_not_outlive_an_unfinished_takeover() {
    bounded(async {
        let mut cluster = Cluster::prepare(Options::default());
        let tmpfs = match Tmpfs::mount(&cluster.log_dir(), 8 << 20) {
            Ok(tmpfs) => tmpfs,
            Err(why) => {
                eprintln!(
                    "SKIPPED idle_master_does_not_outlive_an_unfinished_takeover: cannot mount \
                     a tmpfs ({why}); needs root"
                );
                return;
            }
        };
        cluster.start_all();
        cluster.wait_ready().await;
        let client = cluster.client();
        client.write(b"before", b"1").await.expect("WRITE before");
        let epoch = client.status().await.expect("status").epoch;

        tmpfs.fill();
        let started = Instant::now();
        loop {
            let latest = dsm::master::term::newest_claim(&cluster.log_dir()).unwrap_or(0);
            if latest > epoch {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "no takeover attempt on the full volume\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tmpfs.free();

        let after = client.write(b"after", b"2").await.expect("WRITE after");
        cluster.power_cut_and_restart().await;
        for (key, value) in [(&b"before"[..], &b"1"[..]), (b"after", b"2")] {
            let got = client.read(key).await.expect("READ");
            assert_eq!(
                got.map(|(v, _)| v.to_vec()).as_deref(),
                Some(value),
                "acknowledged {} (version {after}) after a full restart\n{}",
                String::from_utf8_lossy(key),
                cluster.logs()
            );
        }
        drop(tmpfs);
    })
    .await;
}

/// Sets the soft `RLIMIT_FSIZE` of the running master and backup: `1`
/// makes every file of theirs full, infinity gives the space back. (Slaves
/// keep their own volumes, which stay healthy.)
fn set_file_size_limit(cluster: &Cluster, soft: u64) {
    for member in [&cluster.master, &cluster.backup] {
        let Some(pid) = member.process_id() else {
            continue;
        };
        let mut current = nix::libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
        let rc = unsafe {
            nix::libc::prlimit(
                pid as nix::libc::pid_t,
                nix::libc::RLIMIT_FSIZE,
                std::ptr::null(),
                &mut current,
            )
        };
        assert_eq!(rc, 0, "read RLIMIT_FSIZE of {}", member.name);
        let new = nix::libc::rlimit {
            rlim_cur: soft.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        // SAFETY: as above.
        let rc = unsafe {
            nix::libc::prlimit(
                pid as nix::libc::pid_t,
                nix::libc::RLIMIT_FSIZE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(
            rc,
            0,
            "set RLIMIT_FSIZE of {}: {}",
            member.name,
            std::io::Error::last_os_error()
        );
    }
}

/// Acknowledged WRITEs, then a full volume: the next WRITE fails with an
/// error naming `cause`; then space returns: WRITEs resume without any
/// restart; then a restart of every process: everything acknowledged is
/// there and the refused WRITE is all-or-nothing.
async fn full_volume_scenario(
    cluster: &mut Cluster,
    cause: &str,
    mut fill: impl FnMut(&Cluster),
    mut free: impl FnMut(&Cluster),
) {
    let client = cluster.client();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let key = format!("before-{i}");
        let value = value_for(&key);
        client
            .write(key.as_bytes(), &value)
            .await
            .expect("WRITE before the volume fills");
        acknowledged.push((key, value));
    }
    let epoch_before = client.status().await.expect("status").epoch;

    fill(cluster);
    // One address, no retries: the error of this very attempt.
    let refused = value_for("refused");
    let err = Cluster::direct_client(&cluster.master.address)
        .write(b"refused", &refused)
        .await
        .expect_err("a WRITE on a full log volume must fail");
    let message = err.to_string();
    assert!(
        message.contains("UNAVAILABLE")
            && message.contains("write-ahead log append failed")
            && message.contains(cause),
        "the error names the cause ({cause}): {message}"
    );
    eprintln!("refused as expected: {message}");

    // While the volume stays full nothing is acknowledged.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let answer = Cluster::direct_client(&cluster.master.address)
            .write(b"while-full", b"x")
            .await;
        assert!(answer.is_err(), "acknowledged on a full volume: {answer:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    free(cluster);
    let resumed = value_for("resumed");
    let started = Instant::now();
    loop {
        match client.write(b"resumed", &resumed).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < WAIT => {
                eprintln!("not yet: {e}");
            }
            Err(e) => panic!("WRITEs never resumed: {e}\n{}", cluster.logs()),
        }
    }
    acknowledged.push(("resumed".to_string(), resumed));
    let epoch_after = client.status().await.expect("status").epoch;
    assert!(
        epoch_after > epoch_before,
        "recovered by a new term: epoch {epoch_before} -> {epoch_after}"
    );

    cluster.power_cut_and_restart().await;
    for (key, value) in &acknowledged {
        let got = client.read(key.as_bytes()).await.expect("READ");
        assert_eq!(
            got.map(|(v, _)| v.to_vec()).as_ref(),
            Some(value),
            "acknowledged {key}"
        );
    }
    for (key, value) in [("refused", &refused), ("while-full", &b"x".to_vec())] {
        let got = client.read(key.as_bytes()).await.expect("READ");
        if let Some((v, _)) = got {
            assert_eq!(&v.to_vec(), value, "{key} is all-or-nothing");
        }
    }
}

/// A distinct value of [`VALUE_BYTES`] per key.
fn value_for(key: &str) -> Vec<u8> {
    key.bytes().cycle().take(VALUE_BYTES).collect()
}
