//! The lung-weight curriculum: `loss.lung_weight` ramps from 1 (no lung emphasis) to its
//! configured target over the first steps of training, linearly or along a half cosine.
//!
//! Why: early in training G's output is far from the CTPA everywhere; weighting the lungs 10x
//! from step 1 spends the first updates on the lung texture before the body's intensities are
//! right. Starting from a uniform weight and raising it lets G learn the global mapping first.
//! Off by default (the weight is the constant target) until measured to help.
//!
//! The weight is a pure function of the step ([`LungCurriculumConfig::lung_weight_at`]), so a
//! resumed run uses exactly the weights of the uninterrupted one without saving any state.
//!
//! # What is logged
//! Every `train` event in `metrics.jsonl` carries the step's `lung_weight`. With the ramp on,
//! a `lung_weight` event (and an info line in `train.log`) is written on each logging step
//! (`log.every`) at which the weight differs from the last one logged by at least
//! [`LOG_RESOLUTION`], on the first logging step of a process (also after a resume), and at the
//! step the ramp ends (the first step at the target), whether or not it is a logging step.

use crate::events::{num, EventLog, HumanLog};
use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Smallest change of the lung weight that is logged again (absolute, in weight units: a
/// ramp from 1 to 10 is logged in steps of at least 0.01).
pub const LOG_RESOLUTION: f64 = 0.01;

/// Shape of the ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ramp {
    /// No curriculum: the target weight from step 1.
    #[default]
    Off,
    /// `1 + (target - 1) * p`.
    Linear,
    /// `1 + (target - 1) * (1 - cos(pi p)) / 2`: slow start and slow arrival.
    Cosine,
}

/// `[lung_curriculum]`: how `loss.lung_weight` is reached.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LungCurriculumConfig {
    /// "off", "linear" or "cosine". Default: "off".
    pub ramp: Ramp,
    /// Length of the ramp in optimizer steps: step `s` (1-based) uses progress
    /// `p = min((s - 1) / steps, 1)`, so step 1 weighs the lungs 1 and step `steps + 1` is the
    /// first at the target. Default: 0.
    pub steps: u64,
    /// The length in epochs instead (passes over the training slices, as `schedule.epochs`);
    /// converted to `steps` when the run starts. Default: unset.
    pub epochs: Option<f64>,
}

impl LungCurriculumConfig {
    /// Whether the weight ramps at all.
    pub fn enabled(&self) -> bool {
        self.ramp != Ramp::Off
    }

    /// Turns `epochs` into `steps` (`steps_per_epoch` = training slices / batch size).
    pub fn resolve(&mut self, steps_per_epoch: f64) -> anyhow::Result<()> {
        if let Some(epochs) = self.epochs.take() {
            if !(epochs.is_finite() && epochs > 0.0) {
                bail!("lung_curriculum.epochs must be positive, got {epochs}");
            }
            self.steps = (epochs * steps_per_epoch).ceil().max(1.0) as u64;
        }
        Ok(())
    }

    /// Checks that an enabled ramp has a length.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(e) = self.epochs {
            if !(e.is_finite() && e > 0.0) {
                bail!("lung_curriculum.epochs must be positive, got {e}");
            }
            if self.steps > 0 {
                bail!(
                    "lung_curriculum: give the ramp's length as steps ({}) or epochs ({e}), not \
                     both",
                    self.steps
                );
            }
        }
        if self.enabled() && self.steps == 0 && self.epochs.is_none() {
            bail!(
                "lung_curriculum.ramp = {:?} needs a length: steps or epochs",
                self.ramp
            );
        }
        Ok(())
    }

    /// The lung weight of step `step` (1-based) for the configured `target`.
    pub fn lung_weight_at(&self, step: u64, target: f64) -> f64 {
        if !self.enabled() || self.steps == 0 {
            return target;
        }
        let p = (step.saturating_sub(1) as f64 / self.steps as f64).min(1.0);
        let shape = match self.ramp {
            Ramp::Off => 1.0,
            Ramp::Linear => p,
            Ramp::Cosine => (1.0 - (std::f64::consts::PI * p).cos()) / 2.0,
        };
        if p >= 1.0 {
            // Exactly the target at and after the end (no rounding in 1 + (t - 1) * 1).
            return target;
        }
        1.0 + (target - 1.0) * shape
    }

    /// The first step at the target weight (`None` without a ramp).
    pub fn end_step(&self) -> Option<u64> {
        (self.enabled() && self.steps > 0).then_some(self.steps + 1)
    }

    /// One line for the start of `train.log`.
    pub fn describe(&self, target: f64) -> Option<String> {
        self.end_step().map(|end| {
            format!(
                "lung-weight curriculum: {:?} ramp of loss.lung_weight from 1 to {target} over \
                 steps 1..{}, the target from step {end}",
                self.ramp, self.steps
            )
        })
    }
}

/// Decides when the lung weight is logged (see the module docs) and writes the event and the
/// `train.log` line.
#[derive(Debug, Default)]
pub struct LungWeightLog {
    last: Option<f64>,
}

impl LungWeightLog {
    /// Whether step `step`, with weight `value`, is logged (and remembers it if so).
    pub fn due(
        &mut self,
        cfg: &LungCurriculumConfig,
        step: u64,
        value: f64,
        log_step: bool,
    ) -> bool {
        if !cfg.enabled() {
            return false;
        }
        let changed = self
            .last
            .is_none_or(|last| (value - last).abs() >= LOG_RESOLUTION);
        let at_end = cfg.end_step() == Some(step) && self.last != Some(value);
        let due = (log_step && changed) || at_end;
        if due {
            self.last = Some(value);
        }
        due
    }

    /// Logs `value` at `step` to `metrics.jsonl` (event `lung_weight`), `train.log` and the
    /// info log when [`Self::due`].
    pub fn observe(
        &mut self,
        cfg: &LungCurriculumConfig,
        step: u64,
        value: f64,
        log_step: bool,
        events: &mut EventLog,
        human: &mut HumanLog,
    ) -> anyhow::Result<()> {
        if !self.due(cfg, step, value, log_step) {
            return Ok(());
        }
        let end = cfg.end_step().unwrap_or(step);
        events.write(
            step,
            "lung_weight",
            &[
                ("lung_weight", num(value)),
                ("ramp_end_step", serde_json::Value::from(end)),
            ],
        )?;
        let line = if step >= end {
            format!("step {step}: lung weight {value:.2} (curriculum done)")
        } else {
            format!("step {step}: lung weight {value:.2} (curriculum until step {end})")
        };
        human.line(&line);
        tracing::info!("{line}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(ramp: Ramp, steps: u64) -> LungCurriculumConfig {
        LungCurriculumConfig {
            ramp,
            steps,
            epochs: None,
        }
    }

    #[test]
    fn off_is_the_constant_target() {
        let c = LungCurriculumConfig::default();
        assert!(!c.enabled());
        assert!((1..2000).all(|s| c.lung_weight_at(s, 10.0) == 10.0));
        assert_eq!(c.end_step(), None);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn linear_ramp_values() {
        let c = ramp(Ramp::Linear, 600);
        assert_eq!(c.lung_weight_at(1, 10.0), 1.0);
        // Step 301: p = 300 / 600 = 0.5 -> 1 + 9 * 0.5.
        assert!((c.lung_weight_at(301, 10.0) - 5.5).abs() < 1e-12);
        assert!((c.lung_weight_at(151, 10.0) - 3.25).abs() < 1e-12);
        assert!((c.lung_weight_at(600, 10.0) - (1.0 + 9.0 * 599.0 / 600.0)).abs() < 1e-12);
        assert_eq!(c.lung_weight_at(601, 10.0), 10.0);
        assert_eq!(c.lung_weight_at(1500, 10.0), 10.0);
        assert_eq!(c.end_step(), Some(601));
        let w: Vec<f64> = (1..=700).map(|s| c.lung_weight_at(s, 10.0)).collect();
        assert!(w.windows(2).all(|p| p[1] >= p[0]));
        // A target below 1 ramps down the same way.
        assert!((c.lung_weight_at(301, 0.5) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn cosine_ramp_values() {
        let c = ramp(Ramp::Cosine, 100);
        assert_eq!(c.lung_weight_at(1, 10.0), 1.0);
        // p = 0.5: the midpoint of the half cosine.
        assert!((c.lung_weight_at(51, 10.0) - 5.5).abs() < 1e-12);
        // p = 0.25: (1 - cos(pi / 4)) / 2 = 0.146446...
        let q = (1.0 - std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        assert!((c.lung_weight_at(26, 10.0) - (1.0 + 9.0 * q)).abs() < 1e-12);
        // Slower than linear at first, faster in the middle.
        let l = ramp(Ramp::Linear, 100);
        assert!(c.lung_weight_at(11, 10.0) < l.lung_weight_at(11, 10.0));
        assert_eq!(c.lung_weight_at(101, 10.0), 10.0);
    }

    #[test]
    fn epochs_resolve_to_steps_and_bad_configs_are_rejected() {
        let mut c = LungCurriculumConfig {
            ramp: Ramp::Cosine,
            steps: 0,
            epochs: Some(2.5),
        };
        assert!(c.validate().is_ok());
        c.resolve(37.5).unwrap();
        assert_eq!((c.steps, c.epochs), (94, None));
        assert!(ramp(Ramp::Linear, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs a length"));
        let both = LungCurriculumConfig {
            ramp: Ramp::Linear,
            steps: 10,
            epochs: Some(1.0),
        };
        assert!(both
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not both"));
        let mut neg = LungCurriculumConfig {
            epochs: Some(-1.0),
            ..both
        };
        assert!(neg.resolve(10.0).is_err());
        let parsed: LungCurriculumConfig =
            toml::from_str("ramp = \"cosine\"\nsteps = 600\n").unwrap();
        assert_eq!(parsed, ramp(Ramp::Cosine, 600));
        assert!(toml::from_str::<LungCurriculumConfig>("ramp = \"exp\"").is_err());
    }

    #[test]
    fn logged_on_log_steps_when_changed_and_at_the_end() {
        let c = ramp(Ramp::Linear, 25);
        let mut log = LungWeightLog::default();
        let mut logged = Vec::new();
        for step in 1..=60 {
            let w = c.lung_weight_at(step, 10.0);
            if log.due(&c, step, w, step % 10 == 0) {
                logged.push(step);
            }
        }
        // Log steps 10 and 20 (changing), the end at 26, then 30.. no change: nothing.
        assert_eq!(logged, [10, 20, 26]);
        // A constant weight is logged once; changes below the resolution are not.
        let mut log = LungWeightLog::default();
        assert!(log.due(&c, 30, 10.0, true));
        assert!(!log.due(&c, 40, 10.0, true));
        assert!(!log.due(&c, 50, 10.0 + LOG_RESOLUTION / 2.0, true));
        // Off: never.
        let mut log = LungWeightLog::default();
        assert!(!log.due(&LungCurriculumConfig::default(), 10, 10.0, true));
    }
}
