//! Summaries of repeated timings.

use serde::{Deserialize, Serialize};

/// Median and spread of a set of timings (seconds). Quantiles interpolate linearly between
/// order statistics (numpy's default), the same rule as `tools/pytorch_twin/bench.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// The raw samples, in the order measured.
    pub samples: Vec<f64>,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub mean: f64,
}

impl Timings {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        Some(Self {
            median: quantile(&sorted, 0.5),
            p10: quantile(&sorted, 0.1),
            p90: quantile(&sorted, 0.9),
            mean,
            samples,
        })
    }
}

/// One summary of the samples of both (`a`'s first, in the order measured).
pub fn pooled(a: &Timings, b: &Timings) -> Timings {
    let samples: Vec<f64> = a.samples.iter().chain(&b.samples).copied().collect();
    // both have at least one sample, so the pool does too
    Timings::of(samples).unwrap_or_else(|| a.clone())
}

/// Quantile `p` of sorted, non-empty `s`, interpolating linearly.
fn quantile(s: &[f64], p: f64) -> f64 {
    let pos = p * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {

    #[test]
    fn pooling_keeps_every_sample_in_order_and_resummarises() {
        let a = Timings::of(vec![3.0, 1.0]).unwrap();
        let b = Timings::of(vec![10.0, 2.0, 4.0]).unwrap();
        let p = pooled(&a, &b);
        assert_eq!(p.samples, vec![3.0, 1.0, 10.0, 2.0, 4.0]);
        assert_eq!(p.median, 3.0);
        assert_eq!(p.mean, 4.0);
        assert_eq!(p, Timings::of(p.samples.clone()).unwrap());
    }

    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.percentile([4, 1, 3, 2, 5], [10, 50, 90]) = [1.4, 3.0, 4.6]
        let s = Timings::of(vec![4.0, 1.0, 3.0, 2.0, 5.0]).unwrap();
        assert!((s.p10 - 1.4).abs() < 1e-12);
        assert_eq!(s.median, 3.0);
        assert!((s.p90 - 4.6).abs() < 1e-12);
        assert_eq!(s.mean, 3.0);
        assert_eq!(s.samples, vec![4.0, 1.0, 3.0, 2.0, 5.0]);
        assert!(Timings::of(vec![]).is_none());
        let one = Timings::of(vec![2.5]).unwrap();
        assert_eq!((one.p10, one.median, one.p90), (2.5, 2.5, 2.5));
    }
}
