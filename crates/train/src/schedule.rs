//! Length of training and the learning-rate schedule: constant, then linear decay (RegGAN,
//! after pix2pix/CycleGAN: `lr * (1 - max(0, epoch - decay_epoch) / (n_epochs - decay_epoch))`),
//! here in steps rather than epochs so that a resumed run and a run of a few hundred steps
//! follow the same curve.

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// How long to train and how the learning rate evolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Total optimizer steps. Default: 100000.
    pub steps: u64,
    /// Give the length in epochs (passes over the training slices) instead; converted to
    /// `steps` when the run starts (the resolved config holds the steps). Default: unset.
    pub epochs: Option<f64>,
    /// Fraction of `steps` trained at the full learning rate before the linear decay starts.
    /// Default: 0.5 (RegGAN: decay over the second half).
    pub decay_start: f64,
    /// Learning rate at the last step, as a fraction of the initial one. Default: 0.0.
    pub final_lr_factor: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            steps: 100_000,
            epochs: None,
            decay_start: 0.5,
            final_lr_factor: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Checks ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.steps == 0 && self.epochs.is_none() {
            bail!("schedule.steps must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.decay_start) {
            bail!(
                "schedule.decay_start must lie in [0, 1], got {}",
                self.decay_start
            );
        }
        if !(0.0..=1.0).contains(&self.final_lr_factor) {
            bail!(
                "schedule.final_lr_factor must lie in [0, 1], got {}",
                self.final_lr_factor
            );
        }
        Ok(())
    }

    /// The learning-rate multiplier for step `step` (1-based: the factor used for the `step`-th
    /// update). 1 up to the decay start, then falling linearly to `final_lr_factor` at the last
    /// step.
    pub fn lr_factor(&self, step: u64) -> f64 {
        let total = self.steps.max(1) as f64;
        let start = (self.decay_start * total).floor();
        let t = step as f64;
        if t <= start || total <= start {
            return 1.0;
        }
        let frac = ((t - start) / (total - start)).clamp(0.0, 1.0);
        1.0 - frac * (1.0 - self.final_lr_factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_then_linear_to_final() {
        let s = ScheduleConfig {
            steps: 100,
            epochs: None,
            decay_start: 0.5,
            final_lr_factor: 0.0,
        };
        assert_eq!(s.lr_factor(1), 1.0);
        assert_eq!(s.lr_factor(50), 1.0);
        assert!((s.lr_factor(75) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr_factor(100), 0.0);
        // Monotone non-increasing.
        let f: Vec<f64> = (1..=100).map(|t| s.lr_factor(t)).collect();
        assert!(f.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn no_decay_when_start_is_one() {
        let s = ScheduleConfig {
            steps: 10,
            decay_start: 1.0,
            final_lr_factor: 0.0,
            epochs: None,
        };
        assert!((1..=10).all(|t| s.lr_factor(t) == 1.0));
    }

    #[test]
    fn final_factor_is_reached() {
        let s = ScheduleConfig {
            steps: 10,
            decay_start: 0.0,
            final_lr_factor: 0.1,
            epochs: None,
        };
        assert!((s.lr_factor(10) - 0.1).abs() < 1e-12);
        assert!((s.lr_factor(5) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn bad_ranges_are_rejected() {
        let s = ScheduleConfig {
            decay_start: 1.5,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("decay_start"));
    }
}
