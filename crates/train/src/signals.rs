//! Stopping a run on a signal without losing work: SIGTERM (a scheduler's preemption or
//! `kill`), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's `--signal=USR1@120`, sent ahead of the time
//! limit) ask the trainer to finish the step it is in, write `checkpoints/latest`, and end
//! with [`EXIT_STOPPED`]; `--resume` then continues exactly. A second SIGINT while the run is
//! stopping ends the process at once with exit code 130 (as the shell reports Ctrl-C), for
//! when the checkpoint itself hangs.
//!
//! The handlers only set atomics (async-signal-safe, through `signal-hook`); the trainer reads
//! the flag between steps. The distributed trainer all-reduces the same flag so every rank
//! stops after the same step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The exit code of a run stopped by a signal after its checkpoint was written
/// (`EX_TEMPFAIL` of sysexits.h: "temporary failure, retry later"); a job script requeues or
/// resumes on it.
pub const EXIT_STOPPED: u8 = 75;

/// The exit code of a second SIGINT during the stop (128 + SIGINT, what shells report).
pub const EXIT_ABORTED: i32 = 130;

/// Set by a signal handler (or by a caller: tests, an embedding program), read by the trainer
/// between steps. Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct StopFlag {
    requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopFlag {
    /// Installs the handlers of SIGTERM, SIGINT and SIGUSR1 for this flag (see the module
    /// docs). Call once per process.
    pub fn install(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        // The second SIGINT: registered first, so it sees the flag as the first one left it.
        signal_hook::flag::register_conditional_shutdown(
            SIGINT,
            EXIT_ABORTED,
            Arc::clone(&self.requested),
        )?;
        for sig in [SIGTERM, SIGINT, SIGUSR1] {
            signal_hook::flag::register_usize(sig, Arc::clone(&self.signal), sig as usize)?;
            signal_hook::flag::register(sig, Arc::clone(&self.requested))?;
        }
        tracing::debug!("SIGTERM, SIGINT and SIGUSR1 stop training after the current step");
        Ok(())
    }

    /// Asks the run to stop after the current step, as signal `signal` would.
    pub fn request(&self, signal: i32) {
        self.signal.store(signal as usize, Ordering::SeqCst);
        self.requested.store(true, Ordering::SeqCst);
    }

    /// The number of the signal that asked to stop, if one did (the data-parallel stop vote).
    pub fn requested_number(&self) -> Option<i32> {
        self.requested
            .load(Ordering::SeqCst)
            .then(|| self.signal.load(Ordering::SeqCst) as i32)
    }

    /// The signal that asked to stop, if one did (its name: "SIGTERM", ...).
    pub fn requested(&self) -> Option<&'static str> {
        if !self.requested.load(Ordering::SeqCst) {
            return None;
        }
        Some(signal_name(self.signal.load(Ordering::SeqCst) as i32))
    }
}

/// "SIGTERM", "SIGINT", "SIGUSR1", else "a signal".
pub fn signal_name(signal: i32) -> &'static str {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_by_every_clone_with_its_signal() {
        let flag = StopFlag::default();
        let seen_by = flag.clone();
        assert_eq!(seen_by.requested(), None);
        flag.request(signal_hook::consts::SIGUSR1);
        assert_eq!(seen_by.requested(), Some("SIGUSR1"));
    }
}
