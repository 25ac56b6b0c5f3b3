//! Resident memory of this process, and its peak over a phase of the benchmark.
//!
//! Method: before a phase, `5` is written to `/proc/self/clear_refs`, which resets the
//! kernel's high-water mark `VmHWM` to the current resident size (Linux >= 4.0); after the
//! phase `VmHWM` is the peak resident memory reached during it. `tools/pytorch_twin/bench.py`
//! does the same, so both sides are measured alike. Where `clear_refs` cannot be written the
//! peak is the process's lifetime peak, and the report says so (`method`).

use serde::{Deserialize, Serialize};

/// Peak resident memory of one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseMemory {
    /// Resident size when the phase started, MiB.
    pub base_mb: f64,
    /// Highest resident size during the phase, MiB.
    pub peak_mb: f64,
    /// `clear_refs` (peak of this phase) or `process_lifetime` (reset impossible).
    pub method: String,
}

/// A field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`), `None` off Linux.
pub fn status_mb(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&text, field).map(|kb| kb as f64 / 1024.0)
}

/// The value in kB of `field` in the text of a `/proc/PID/status` file.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Runs `f` and measures the peak resident memory during it.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<PhaseMemory>) {
    let method = match std::fs::write("/proc/self/clear_refs", "5") {
        Ok(()) => "clear_refs",
        Err(e) => {
            tracing::debug!("cannot reset VmHWM ({e}); peaks are process-lifetime peaks");
            "process_lifetime"
        }
    };
    let base = status_mb("VmRSS");
    let out = f();
    let peak = status_mb("VmHWM");
    let mem = match (base, peak) {
        (Some(base_mb), Some(peak_mb)) => Some(PhaseMemory {
            base_mb,
            peak_mb,
            method: method.into(),
        }),
        _ => None,
    };
    (out, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tbench\nVmPeak:\t  999 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(2048));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }

    /// Touching 64 MiB inside the phase raises its peak by about that much.
    #[test]
    fn peak_sees_an_allocation_inside_the_phase() {
        let _serial = crate::serial_test();
        let (_, mem) = measure(|| {
            let v = vec![1u8; 64 << 20];
            std::hint::black_box(&v);
            v.iter().map(|&b| b as u64).sum::<u64>()
        });
        if let Some(m) = mem {
            if m.method == "clear_refs" {
                assert!(m.peak_mb - m.base_mb > 48.0, "{m:?}");
            }
        }
    }
}
