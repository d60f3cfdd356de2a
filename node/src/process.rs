//! A member process of a cluster on this machine, supervised: started with
//! its flags and environment, its output appended to a log file, signalled
//! (SIGKILL, SIGTERM, SIGSTOP, SIGCONT), started again the same way, waited
//! for, and killed when dropped.
//!
//! `dsm local` and `dsm bench` ([`crate::local`]), the nemesis
//! ([`crate::chaos::cluster`]) and the integration tests all run their
//! `dsm` processes through [`Process`], so none of them leaves a child
//! behind: not when the caller returns early, not when it panics, and not
//! when it is itself killed with SIGKILL (the child is asked to die with
//! its parent).
//!
//! The child is a [`std::process::Child`], not a tokio one, so that the
//! synchronous test harness and `Drop` can use it without a runtime; the
//! async waits poll it instead of blocking a runtime thread.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a wait checks whether the process has exited.
const POLL: Duration = Duration::from_millis(20);

/// How long [`Process::kill`] waits for a process killed with SIGKILL to be
/// gone; only a process stuck in the kernel (a hung disk) takes longer.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One supervised process: what it runs, and the running child if any.
pub struct Process {
    /// `master`, `backup` or `slave-N`: names the process in errors.
    pub name: String,
    /// The executable, normally this `dsm` binary.
    program: PathBuf,
    /// Its flags, kept to start it again the same way; a caller may add
    /// to them before a start (a slave's `--advertise` of its proxy).
    pub args: Vec<String>,
    /// Environment added at every start (RUST_LOG, libfaketime,
    /// FAILPOINTS); a test may change it between two starts.
    pub env: Vec<(String, String)>,
    /// File that receives the output, appended to across restarts so that
    /// a failure message can show every life of the process.
    log: PathBuf,
    /// The process, from its start until it was reaped.
    child: Option<Child>,
    /// Stopped with SIGSTOP and not continued since.
    paused: bool,
}

impl Process {
    /// A process not started yet: `program` with `args`, output to `log`.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: impl Into<PathBuf>,
    ) -> Process {
        Process {
            name: name.into(),
            program: program.into(),
            args,
            env: Vec::new(),
            log: log.into(),
            child: None,
            paused: false,
        }
    }

    /// The same, with `env` added to the environment of every start.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Process {
        self.env = env;
        self
    }

    /// Starts the process, its output appended to the log; one still
    /// running from an earlier start is killed first, so this is also how a
    /// process is restarted. The child gets SIGKILL when this process dies,
    /// even of SIGKILL.
    ///
    /// # Errors
    /// When the log cannot be opened or the program cannot be started.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.kill_blocking();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure only calls prctl(2), which is
        // async-signal-safe. The death signal is tied to the thread that
        // forks, which is why every caller starts its processes from
        // threads that live as long as the processes should.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The process id, from its start until it was reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and not reaped since.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is stopped by [`pause`](Self::pause).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    /// When the process is not running, or the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .id()
            .with_context(|| format!("{} is not running", self.name))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// SIGSTOP: the process freezes with its sockets, locks and lease held.
    ///
    /// # Errors
    /// As [`signal`](Self::signal).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT, after [`pause`](Self::pause).
    ///
    /// # Errors
    /// As [`signal`](Self::signal).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// SIGTERM, without waiting: the process shuts down cleanly on its own
    /// (see [`wait_exit`](Self::wait_exit)).
    ///
    /// # Errors
    /// As [`signal`](Self::signal).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL (a paused process is not continued first: it dies without
    /// running another instruction), then waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait_exit(KILL_WAIT).await;
        self.forget();
    }

    /// [`kill`](Self::kill) for callers without a runtime (the test
    /// harness, `Drop`): blocks until the process is reaped.
    pub fn kill_blocking(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget();
    }

    /// Waits at most `timeout` for the process to exit, and returns how it
    /// exited; `None` if it is still running then, or was not running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Poll::Ready(exit) = self.poll_exit(deadline) {
                return exit;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`wait_exit`](Self::wait_exit) for callers without a runtime: blocks
    /// the thread.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Poll::Ready(exit) = self.poll_exit(deadline) {
                return exit;
            }
            std::thread::sleep(POLL);
        }
    }

    /// One look for the waits: ready with the exit status once the process
    /// has exited (it is then reaped), ready with `None` when it is not
    /// running or `deadline` has passed, pending otherwise.
    fn poll_exit(&mut self, deadline: Instant) -> Poll<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Poll::Ready(None);
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.forget();
            return Poll::Ready(Some(status));
        }
        if Instant::now() >= deadline {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Drops the child: it was reaped, or was killed and is left to the
    /// kernel.
    fn forget(&mut self) {
        self.child = None;
        self.paused = false;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but continue it so that
        // nothing is left frozen if the kill is missed.
        let _ = self.signal(Signal::SIGCONT);
        self.kill_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> Process {
        Process::new(
            "sleeper",
            "/bin/sh",
            vec!["-c".into(), "echo started $GREETING; exec sleep 60".into()],
            dir.join("sleeper.log"),
        )
        .with_env(vec![("GREETING".into(), "hello".into())])
    }

    /// Waits until the log shows `lives` starts: the shell has run by then.
    async fn wait_started(process: &Process, lives: usize) {
        for _ in 0..500 {
            let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
            if log.matches("started hello").count() >= lives {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} did not start {lives} times", process.name);
    }

    #[tokio::test]
    async fn a_process_is_signalled_restarted_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = sleeper(dir.path());
        assert!(!process.running() && process.signal(Signal::SIGCONT).is_err());
        process.start().unwrap();
        wait_started(&process, 1).await;
        let first = process.id().unwrap();
        process.pause().unwrap();
        assert!(process.paused());
        process.resume().unwrap();
        assert!(process.wait_exit(Duration::from_millis(50)).await.is_none());
        process.start().unwrap();
        wait_started(&process, 2).await;
        assert_ne!(process.id(), Some(first));
        process.terminate().unwrap();
        let exit = process.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(!exit.success() && !process.running());
        process.start().unwrap();
        wait_started(&process, 3).await;
        process.kill().await;
        assert!(!process.running() && !process.paused());
    }

    #[test]
    fn a_process_is_killed_when_dropped_even_when_paused() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = sleeper(dir.path());
        process.start().unwrap();
        process.pause().unwrap();
        let pid = Pid::from_raw(process.id().unwrap() as i32);
        drop(process);
        // Reaped: the pid no longer names a process of ours.
        assert!(kill(pid, None).is_err());
    }
}
