//! The commit window of the two group-commit writers (the master's
//! write-ahead log and each slave's store): under load, a batch is held open
//! briefly so that more writes share its fsync.
//!
//! Why: a writer that commits as soon as one write arrives commits a few
//! writes at a time under load, and every commit costs an fsync (tens of µs
//! of CPU here, plus the journal commit a growing file needs) whatever its
//! size. Waiting a few hundred microseconds cuts the commits, and the CPU
//! they burn, severalfold (docs/BENCHMARKS.md). "Under load" means the
//! previous batch held more than one write: a lone writer never waits, so
//! its latency is unchanged.

use std::time::Duration;

/// Default window of both writers: well under one fsync under load on the
/// machines we measured, so it adds little latency.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_micros(500);

/// Whether the writer thread waits before taking a batch, and how long.
#[derive(Debug, Clone, Copy)]
pub struct CommitWindow {
    window: Duration,
    loaded: bool,
}

impl CommitWindow {
    /// A window of `window`; zero never waits.
    pub fn new(window: Duration) -> CommitWindow {
        CommitWindow {
            window,
            loaded: false,
        }
    }

    /// Called on the writer thread once the first write of a batch has
    /// arrived, before taking the others: sleeps for the window if the
    /// writer is under load.
    pub fn wait(&self) {
        if self.should_wait() {
            std::thread::sleep(self.window);
        }
    }

    /// Records the size of the batch just taken.
    pub fn taken(&mut self, batch_len: usize) {
        self.loaded = batch_len > 1;
    }

    fn should_wait(&self) -> bool {
        self.loaded && !self.window.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_after_a_batch_of_several_writes() {
        let mut window = CommitWindow::new(DEFAULT_COMMIT_WINDOW);
        assert!(!window.should_wait(), "the first write commits at once");
        window.taken(1);
        assert!(!window.should_wait(), "a lone writer never waits");
        window.taken(5);
        assert!(window.should_wait(), "under load the batch is held open");
        window.taken(1);
        assert!(!window.should_wait(), "load gone, no more waiting");
    }

    #[test]
    fn a_zero_window_never_waits() {
        let mut window = CommitWindow::new(Duration::ZERO);
        window.taken(100);
        assert!(!window.should_wait());
    }
}
