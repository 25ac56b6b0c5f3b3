//! Progressive training: the networks join one after the other.
//!
//! ```text
//! phase 1  "generator"      G alone: L1 + SSIM of G(x) against y (as with registration off);
//!                           R is not run, D is not run, no adversarial term, no D update
//! phase 2  "registration"   + R: the reconstruction loss sees warp(G(x), R(G(x), y)), plus the
//!                           flow smoothness; still no D and no adversarial term
//! phase 3  "adversarial"    + D: the full RegGAN step (what every step is without this)
//! ```
//!
//! Why: at the start G's output is noise, so R has nothing to align and D wins trivially; its
//! gradients then push G around before G has learnt the intensity mapping. Letting G first
//! learn the supervised mapping, then R align a meaningful image, then D sharpen it, is the
//! pix2pixHD/ProGAN-style warm start. Off by default (both phase lengths 0: every step is
//! phase 3, exactly today's step).
//!
//! # Exactness
//! The phase of a step is a pure function of the step and the resolved lengths
//! ([`ProgressiveConfig::phase_at`]), so a run resumed in the middle of a phase continues that
//! phase. A network that is not yet in training is not touched at all: it is not run, its
//! gradients stay undefined, and [`model::optim::Adam::step`] skips variables without a
//! gradient (R's moments and per-variable step counts stay at zero while G trains alone), and
//! D's optimizer is not stepped at all before phase 3 (Adam with a zero gradient would still
//! move weights through its momentum; here no step is taken). D's spectral-norm vectors do not
//! move either (no D forward in training mode).
//!
//! # Logging
//! At the first step of each phase (and at step 1) [`log_switch`] writes a `phase` event to
//! `metrics.jsonl` (fields `phase`, `from`, `until_step`) and an info line to `train.log`.

use crate::events::{EventLog, HumanLog};
use anyhow::bail;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which networks train at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// G alone, L1 + SSIM.
    Generator,
    /// G and R, reconstruction + smoothness.
    Registration,
    /// G, R and D: the full RegGAN step.
    Adversarial,
}

impl Phase {
    /// The phase's name in logs and events.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Generator => "generator",
            Phase::Registration => "registration",
            Phase::Adversarial => "adversarial",
        }
    }

    /// Whether R is run and trained (when the run has one).
    pub fn trains_registration(self) -> bool {
        self >= Phase::Registration
    }

    /// Whether D is run, the adversarial term is in G's loss, and D is updated.
    pub fn trains_discriminator(self) -> bool {
        self == Phase::Adversarial
    }
}

/// `[progressive]`: the lengths of the first two phases. Each is given in steps or in epochs
/// (passes over the training slices, converted to steps when the run starts; the resolved
/// config holds steps). Both 0 (the default): progressive training is off.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProgressiveConfig {
    /// Steps of phase 1 (G alone). Default: 0.
    pub generator_steps: u64,
    /// Phase 1's length in epochs instead. Default: unset.
    pub generator_epochs: Option<f64>,
    /// Steps of phase 2 (G + R), after phase 1. Default: 0.
    pub registration_steps: u64,
    /// Phase 2's length in epochs instead. Default: unset.
    pub registration_epochs: Option<f64>,
}

impl ProgressiveConfig {
    /// Whether any step is not a full RegGAN step.
    pub fn enabled(&self) -> bool {
        self.generator_steps > 0
            || self.registration_steps > 0
            || self.generator_epochs.is_some()
            || self.registration_epochs.is_some()
    }

    /// Turns the lengths given in epochs into steps (`steps_per_epoch` = training slices /
    /// batch size), rounding up.
    pub fn resolve(&mut self, steps_per_epoch: f64) -> anyhow::Result<()> {
        self.validate()?;
        for (epochs, steps) in [
            (&mut self.generator_epochs, &mut self.generator_steps),
            (&mut self.registration_epochs, &mut self.registration_steps),
        ] {
            if let Some(e) = epochs.take() {
                *steps = (e * steps_per_epoch).ceil().max(1.0) as u64;
            }
        }
        Ok(())
    }

    /// Checks that each length is given once and epochs are positive.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, epochs, steps) in [
            ("generator", self.generator_epochs, self.generator_steps),
            (
                "registration",
                self.registration_epochs,
                self.registration_steps,
            ),
        ] {
            if let Some(e) = epochs {
                if !(e.is_finite() && e > 0.0) {
                    bail!("progressive.{name}_epochs must be positive, got {e}");
                }
                if steps > 0 {
                    bail!(
                        "progressive: give phase {name}'s length as {name}_steps ({steps}) or \
                         {name}_epochs ({e}), not both"
                    );
                }
            }
        }
        Ok(())
    }

    /// The last step of phase 1 (0: no phase 1).
    fn generator_end(&self) -> u64 {
        self.generator_steps
    }

    /// The last step of phase 2 (equal to [`Self::generator_end`]: no phase 2).
    fn registration_end(&self) -> u64 {
        self.generator_steps.saturating_add(self.registration_steps)
    }

    /// The phase of (1-based) step `step`.
    pub fn phase_at(&self, step: u64) -> Phase {
        if step <= self.generator_end() {
            Phase::Generator
        } else if step <= self.registration_end() {
            Phase::Registration
        } else {
            Phase::Adversarial
        }
    }

    /// The last step of `phase` (`None` for the last phase, which runs to the end).
    pub fn last_step_of(&self, phase: Phase) -> Option<u64> {
        match phase {
            Phase::Generator => Some(self.generator_end()),
            Phase::Registration => Some(self.registration_end()),
            Phase::Adversarial => None,
        }
    }
}

/// Logs the phase that starts at `step`, if one does (step 1, or the first step of a phase),
/// as a `phase` event and an info line; nothing when progressive training is off. Call it
/// before the step is taken. `total` is the run's last step (a phase cut short by it is said
/// so).
pub fn log_switch(
    cfg: &ProgressiveConfig,
    step: u64,
    total: u64,
    events: &mut EventLog,
    human: &mut HumanLog,
) -> anyhow::Result<()> {
    if !cfg.enabled() || step == 0 {
        return Ok(());
    }
    let phase = cfg.phase_at(step);
    let from = (step > 1).then(|| cfg.phase_at(step - 1));
    if from == Some(phase) {
        return Ok(());
    }
    let until = cfg.last_step_of(phase).unwrap_or(total).min(total);
    let line = match from {
        None => format!(
            "progressive training: phase {} from step {step} to {until}",
            phase.name()
        ),
        Some(f) => format!(
            "progressive training: phase {} -> {} at step {step} (until step {until})",
            f.name(),
            phase.name()
        ),
    };
    tracing::info!("{line}");
    human.line(&line);
    events.write(
        step,
        "phase",
        &[
            ("phase", Value::from(phase.name())),
            ("from", from.map_or(Value::Null, |f| Value::from(f.name()))),
            ("until_step", Value::from(until)),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(g: u64, r: u64) -> ProgressiveConfig {
        ProgressiveConfig {
            generator_steps: g,
            registration_steps: r,
            ..Default::default()
        }
    }

    #[test]
    fn off_by_default_every_step_is_full() {
        let c = ProgressiveConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.phase_at(1), Phase::Adversarial);
        assert_eq!(c.phase_at(1_000_000), Phase::Adversarial);
    }

    #[test]
    fn phases_follow_the_lengths() {
        let c = cfg(300, 300);
        assert_eq!(c.phase_at(1), Phase::Generator);
        assert_eq!(c.phase_at(300), Phase::Generator);
        assert_eq!(c.phase_at(301), Phase::Registration);
        assert_eq!(c.phase_at(600), Phase::Registration);
        assert_eq!(c.phase_at(601), Phase::Adversarial);
        assert_eq!(c.last_step_of(Phase::Registration), Some(600));
        // no phase 2: straight from G alone to the full step
        let c = cfg(5, 0);
        assert_eq!(c.phase_at(5), Phase::Generator);
        assert_eq!(c.phase_at(6), Phase::Adversarial);
        // no phase 1
        let c = cfg(0, 4);
        assert_eq!(c.phase_at(1), Phase::Registration);
        assert_eq!(c.phase_at(5), Phase::Adversarial);
        assert!(Phase::Registration.trains_registration());
        assert!(!Phase::Registration.trains_discriminator());
        assert!(!Phase::Generator.trains_registration());
    }

    #[test]
    fn epochs_resolve_to_steps_and_are_checked() {
        let mut c = ProgressiveConfig {
            generator_epochs: Some(1.5),
            registration_steps: 7,
            ..Default::default()
        };
        assert!(c.enabled());
        c.resolve(10.0).unwrap();
        assert_eq!(
            (c.generator_steps, c.generator_epochs, c.registration_steps),
            (15, None, 7)
        );
        let both = ProgressiveConfig {
            generator_steps: 3,
            generator_epochs: Some(1.0),
            ..Default::default()
        };
        let err = both.validate().unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let negative = ProgressiveConfig {
            registration_epochs: Some(-1.0),
            ..Default::default()
        };
        assert!(negative.validate().is_err());
    }
}
