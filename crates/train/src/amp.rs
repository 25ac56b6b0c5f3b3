//! Mixed precision: autocast for the forward passes and a dynamic loss scaler for f16.
//!
//! `amp = "off" | "bf16" | "f16"` in the training config ([`Precision`], the one type
//! training and inference share).
//!
//! * **Forward passes** of G, R and D run inside an autocast region ([`Autocast::run`]):
//!   libtorch casts convolutions and matrix products to the reduced dtype and keeps
//!   precision-sensitive ops (norms, reductions, softmax, grid sampling on CUDA) in fp32.
//!   Their outputs are cast back to fp32 and every loss is computed in fp32 outside the
//!   region; backward passes run outside it too, so gradients arrive in the parameters'
//!   dtype. **Master weights stay fp32**: the VarStores, the Adam moments and the checkpoints
//!   are unchanged by `amp`.
//! * **f16** has 5 exponent bits: small gradients underflow to zero. [`LossScaler`] is
//!   PyTorch's `torch.amp.GradScaler` with its defaults: the loss is multiplied by `scale`
//!   (initially 2^16) before backward; the gradients are then divided by it (before any
//!   gradient statistic or clipping) and checked; an optimizer whose gradients hold an inf
//!   or NaN skips its step; at the end of the iteration the scale halves if any optimizer
//!   saw one, and doubles after 2000 consecutive clean iterations. bf16 has fp32's exponent
//!   range, so it needs no scaler (as in PyTorch).
//! * **Devices**: autocast is per device family; `f16` needs CUDA (libtorch's CPU autocast
//!   is bf16-first and f16 on the CPU is slower still). `bf16` on the CPU was measured
//!   **slower** than fp32 on this project's 2-core machine (see the README's benchmark
//!   section / `examples/amp_speed.rs`), so [`check_device`] refuses both on the CPU with a
//!   clear start-up error rather than silently training slower.
//!
//! The scaler's state (scale, clean-step count) is part of a checkpoint
//! ([`LossScaler::save`] / [`LossScaler::load`], `amp_scaler.json`), so a resumed f16 run
//! continues with the same scale and skips the same steps as an uninterrupted one.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use torchext::{AutocastDevice, AutocastGuard};
use tracing::{debug, warn};

/// The checkpoint file of the scaler state.
pub const SCALER_FILE: &str = "amp_scaler.json";

pub use model::precision::Precision;

/// Whether `mode` can run on `device`: `off` anywhere, `bf16` and `f16` on CUDA only (see
/// the module docs for the CPU measurement behind this).
pub fn check_device(mode: Precision, device: Device) -> anyhow::Result<()> {
    match (mode, device) {
        (Precision::Fp32, _) | (_, Device::Cuda(_)) => Ok(()),
        (Precision::F16, _) => bail!(
            "amp = \"f16\" needs a CUDA device (training runs on {device:?}); use amp = \"off\""
        ),
        (Precision::Bf16, _) => bail!(
            "amp = \"bf16\" is CUDA-only: on the CPU, bf16 autocast was measured slower than \
             fp32 for this model (training runs on {device:?}); use amp = \"off\""
        ),
    }
}

/// Autocast for the forward passes of one step (a no-op when `amp` is off).
#[derive(Debug, Clone, Copy)]
pub struct Autocast {
    family: AutocastDevice,
    dtype: Option<Kind>,
}

impl Autocast {
    /// Autocast in `mode` for tensors on `device`.
    pub fn new(mode: Precision, device: Device) -> Self {
        Self {
            family: AutocastDevice::of(device),
            dtype: mode.autocast_kind(),
        }
    }

    /// Runs a forward pass `f` in the reduced precision and returns its output in fp32
    /// (autocast outputs may be f16/bf16; losses are computed in fp32). With `amp` off this
    /// is `f()`.
    pub fn run(&self, f: impl FnOnce() -> Tensor) -> Tensor {
        let Some(dtype) = self.dtype else {
            return f();
        };
        let out = match AutocastGuard::new(self.family, dtype) {
            Ok(_guard) => f(),
            Err(e) => {
                // Cannot happen for the dtypes above; fp32 is a correct fallback.
                warn!("autocast unavailable ({e}); this forward pass runs in fp32");
                f()
            }
        };
        if out.kind() == Kind::Float {
            out
        } else {
            out.to_kind(Kind::Float)
        }
    }
}

/// GradScaler's constants (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerParams {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
}

impl Default for ScalerParams {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// What a checkpoint keeps of the scaler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerState {
    /// Current loss scale (1.0 when disabled).
    pub scale: f64,
    /// Consecutive iterations without inf/NaN gradients since the last change of scale.
    pub growth_tracker: u32,
    /// Whether scaling is on (f16).
    pub enabled: bool,
}

/// Dynamic loss scaling (PyTorch's `GradScaler`, host-side scale). Disabled (scale 1, every
/// call a pass-through) unless `amp = "f16"`.
#[derive(Debug, Clone)]
pub struct LossScaler {
    params: ScalerParams,
    state: ScalerState,
    /// An optimizer of this iteration found inf/NaN gradients.
    found_inf: bool,
    /// Steps skipped since the start (or the last load), for logs.
    skipped: u64,
}

impl LossScaler {
    /// The scaler for `mode`: enabled for f16 only.
    pub fn new(mode: Precision) -> Self {
        Self::with_params(mode == Precision::F16, ScalerParams::default())
    }

    /// A scaler with explicit constants (tests use a short growth interval).
    pub fn with_params(enabled: bool, params: ScalerParams) -> Self {
        Self {
            state: ScalerState {
                scale: if enabled { params.init_scale } else { 1.0 },
                growth_tracker: 0,
                enabled,
            },
            params,
            found_inf: false,
            skipped: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    /// Current loss scale (1 when disabled).
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    pub fn state(&self) -> ScalerState {
        self.state
    }

    /// Optimizer steps skipped so far for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Backward pass of `loss` (a scalar), multiplied by the scale when enabled.
    pub fn backward(&self, loss: &Tensor) {
        if self.state.enabled {
            (loss * self.state.scale).backward();
        } else {
            loss.backward();
        }
    }

    /// Divides the gradients of `vars` by the scale in place and checks them; returns
    /// whether they are all finite, i.e. whether this optimizer may step. Call once per
    /// optimizer per iteration, after its backward pass and before any use of the gradients.
    /// Disabled: returns true without touching anything (non-finite losses are caught before
    /// the optimizers step in fp32 runs). Reads the flag back (a host sync): the training
    /// step uses [`Self::unscale_flag`] and [`Self::record`] to read it with everything else.
    pub fn unscale(&mut self, vars: &[Tensor]) -> bool {
        let finite = self
            .unscale_flag(vars)
            .is_none_or(|found| found.double_value(&[0]) == 0.0);
        self.record(finite);
        finite
    }

    /// [`Self::unscale`] without reading anything back: returns the device's found-inf flag
    /// (a one-element float32 tensor, 1.0 when some gradient holds an inf or NaN, the input
    /// of [`model::optim::Adam::step_unless`]), or `None` when scaling is off or `vars` have
    /// no gradients. The caller reads the flag later and reports it with [`Self::record`].
    pub fn unscale_flag(&self, vars: &[Tensor]) -> Option<Tensor> {
        if !self.state.enabled {
            return None;
        }
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let device = grads.first()?.device();
        let mut found = Tensor::zeros([1], (Kind::Float, device));
        let inv = Tensor::from_slice(&[(1.0 / self.state.scale) as f32]).to_device(device);
        let _guard = tch::no_grad_guard();
        let refs: Vec<&Tensor> = grads.iter().collect();
        // GradScaler's kernel: one pass per gradient, no host round trip.
        if let Err(e) = torchext::unscale_check_(&refs, &found, &inv) {
            // Mixed devices or dtypes: the same arithmetic with ordinary ops.
            debug!("fused unscale unavailable ({e}); unscaling tensor by tensor");
            let _ = found.zero_();
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_(&inv.to_device(g.device()).to_kind(g.kind()));
                let bad = g
                    .isfinite()
                    .logical_not()
                    .any()
                    .to_device(device)
                    .to_kind(Kind::Float);
                let _ = found.shallow_clone().g_add_(&bad);
            }
            let _ = found.clamp_max_(1.0);
        }
        Some(found)
    }

    /// Reports one optimizer's unscale outcome for this iteration (`finite`: its flag read
    /// back as 0); a skipped step backs the scale off at [`Self::update`]. Disabled: nothing.
    pub fn record(&mut self, finite: bool) {
        if !self.state.enabled || finite {
            return;
        }
        self.found_inf = true;
        self.skipped += 1;
        debug!(
            scale = self.state.scale,
            "inf/NaN gradients: this optimizer step is skipped"
        );
    }

    /// End of an iteration (after every optimizer's [`Self::unscale`]): backs off after an
    /// inf/NaN, grows after `growth_interval` clean iterations. Disabled: nothing.
    pub fn update(&mut self) {
        if !self.state.enabled {
            return;
        }
        let before = self.state.scale;
        if std::mem::take(&mut self.found_inf) {
            self.state.scale *= self.params.backoff_factor;
            self.state.growth_tracker = 0;
        } else {
            self.state.growth_tracker += 1;
            if self.state.growth_tracker >= self.params.growth_interval {
                // PyTorch keeps the scale finite: no growth past f32's range.
                let grown = self.state.scale * self.params.growth_factor;
                if (grown as f32).is_finite() {
                    self.state.scale = grown;
                }
                self.state.growth_tracker = 0;
            }
        }
        if self.state.scale != before {
            debug!(
                from = before,
                to = self.state.scale,
                skipped = self.skipped,
                "loss scale changed"
            );
        }
    }

    /// Writes the state to `path` as JSON (a checkpoint file; atomic: temporary name in the
    /// same folder, then rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(&self.state)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| SCALER_FILE.into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    }

    /// Restores the state of [`Self::save`]. The file's `enabled` must match this scaler's
    /// (a checkpoint of an f16 run resumes as f16); the scale must be finite and positive.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let state: ScalerState = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        if state.enabled != self.state.enabled {
            bail!(
                "{}: the loss scaler was {} when saved but the config's amp {} it (was amp \
                 changed on resume?)",
                path.display(),
                if state.enabled { "on" } else { "off" },
                if self.state.enabled {
                    "enables"
                } else {
                    "disables"
                }
            );
        }
        if !(state.scale.is_finite() && state.scale > 0.0) {
            bail!("{}: invalid loss scale {}", path.display(), state.scale);
        }
        self.state = state;
        self.found_inf = false;
        debug!(path = %path.display(), ?state, "loss scaler restored");
        Ok(())
    }

    /// Loads `dir/amp_scaler.json` when present; a checkpoint without one (written before
    /// mixed precision existed, or by an fp32 run) is accepted only when scaling is off.
    pub fn load_from_checkpoint(&mut self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(SCALER_FILE);
        if path.is_file() {
            self.load(&path)
        } else if self.state.enabled {
            bail!(
                "{}: missing (the checkpoint was not written by an amp = \"f16\" run)",
                path.display()
            )
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;

    fn var(vs: &VarStore, name: &str, values: &[f32]) -> Tensor {
        vs.root().var_copy(name, &Tensor::from_slice(values))
    }

    /// Gives every variable the gradient `scale * g` through a real backward pass.
    fn backward(scaler: &LossScaler, vars: &[Tensor], g: &[f32]) {
        let loss = vars
            .iter()
            .map(|v| (v * Tensor::from_slice(g)).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        for v in vars {
            let mut v = v.shallow_clone();
            v.zero_grad();
        }
        scaler.backward(&loss);
    }

    #[test]
    fn gradients_are_scaled_then_unscaled_exactly() {
        let vs = VarStore::new(Device::Cpu);
        let vars = vec![var(&vs, "a", &[1.0, 2.0]), var(&vs, "b", &[3.0, 4.0])];
        let mut s = LossScaler::new(Precision::F16);
        assert_eq!(s.scale(), 65536.0);
        backward(&s, &vars, &[0.25, -3.0]);
        assert_eq!(
            Vec::<f32>::try_from(&vars[0].grad()).unwrap(),
            [16384.0, -196608.0]
        );
        assert!(s.unscale(&vars));
        for v in &vars {
            assert_eq!(Vec::<f32>::try_from(&v.grad()).unwrap(), [0.25, -3.0]);
        }
        s.update();
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.state().growth_tracker, 1);
    }

    #[test]
    fn inf_gradients_skip_the_step_and_halve_the_scale() {
        let vs = VarStore::new(Device::Cpu);
        let vars = vec![var(&vs, "a", &[1.0, 2.0])];
        let mut s = LossScaler::new(Precision::F16);
        for _ in 0..3 {
            backward(&s, &vars, &[1.0, 1.0]);
            assert!(s.unscale(&vars));
            s.update();
        }
        assert_eq!(s.state().growth_tracker, 3);
        // 1e35 * 65536 overflows f32: inf gradient.
        backward(&s, &vars, &[1e35, 1.0]);
        assert!(!s.unscale(&vars), "must report the inf");
        s.update();
        assert_eq!(s.scale(), 32768.0);
        assert_eq!(s.state().growth_tracker, 0);
        assert_eq!(s.skipped(), 1);
        // A NaN too.
        backward(&s, &vars, &[f32::NAN, 1.0]);
        assert!(!s.unscale(&vars));
        s.update();
        assert_eq!(s.scale(), 16384.0);
    }

    #[test]
    fn one_bad_optimizer_backs_off_once_per_iteration() {
        let vs = VarStore::new(Device::Cpu);
        let g_vars = vec![var(&vs, "g", &[1.0])];
        let d_vars = vec![var(&vs, "d", &[1.0])];
        let mut s = LossScaler::new(Precision::F16);
        backward(&s, &g_vars, &[f32::INFINITY]);
        assert!(!s.unscale(&g_vars));
        backward(&s, &d_vars, &[1.0]);
        assert!(s.unscale(&d_vars), "D's own gradients are fine: D steps");
        s.update();
        assert_eq!(s.scale(), 32768.0, "halved once, not per optimizer");
    }

    #[test]
    fn scale_grows_after_the_interval_of_clean_steps() {
        let params = ScalerParams {
            growth_interval: 3,
            ..ScalerParams::default()
        };
        let vs = VarStore::new(Device::Cpu);
        let vars = vec![var(&vs, "a", &[1.0])];
        let mut s = LossScaler::with_params(true, params);
        for i in 1..=7 {
            backward(&s, &vars, &[1.0]);
            assert!(s.unscale(&vars));
            s.update();
            let expected = 65536.0 * 2f64.powi(i / 3);
            assert_eq!(s.scale(), expected, "after {i} clean steps");
        }
        assert_eq!(s.state().growth_tracker, 1);
    }

    #[test]
    fn disabled_scaler_is_a_pass_through() {
        let vs = VarStore::new(Device::Cpu);
        let vars = vec![var(&vs, "a", &[1.0])];
        let mut s = LossScaler::new(Precision::Bf16);
        assert!(!s.enabled());
        backward(&s, &vars, &[f32::INFINITY]);
        assert_eq!(s.scale(), 1.0);
        assert!(s.unscale(&vars), "no check when off");
        assert!(vars[0].grad().double_value(&[0]).is_infinite(), "untouched");
        s.update();
        assert_eq!(s.scale(), 1.0);
    }

    #[test]
    fn state_round_trips_and_mismatches_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let vars = vec![var(&vs, "a", &[1.0])];
        let mut s = LossScaler::new(Precision::F16);
        backward(&s, &vars, &[f32::INFINITY]);
        s.unscale(&vars);
        s.update();
        for _ in 0..5 {
            backward(&s, &vars, &[1.0]);
            s.unscale(&vars);
            s.update();
        }
        s.save(&dir.path().join(SCALER_FILE)).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        let mut r = LossScaler::new(Precision::F16);
        r.load_from_checkpoint(dir.path()).unwrap();
        assert_eq!(r.state(), s.state());
        assert_eq!((r.scale(), r.state().growth_tracker), (32768.0, 5));

        // An fp32 run cannot resume an f16 checkpoint's scaler, and the reverse.
        let mut off = LossScaler::new(Precision::Fp32);
        let err = off.load_from_checkpoint(dir.path()).unwrap_err();
        assert!(err.to_string().contains(SCALER_FILE), "{err}");
        let empty = tempfile::tempdir().unwrap();
        off.load_from_checkpoint(empty.path()).unwrap();
        assert!(LossScaler::new(Precision::F16)
            .load_from_checkpoint(empty.path())
            .is_err());
        // A corrupt scale.
        std::fs::write(
            dir.path().join(SCALER_FILE),
            r#"{"scale": -1.0, "growth_tracker": 0, "enabled": true}"#,
        )
        .unwrap();
        assert!(r.load_from_checkpoint(dir.path()).is_err());
        assert_eq!(r.scale(), 32768.0, "a failed load changes nothing");
    }

    #[test]
    fn cpu_refuses_reduced_precision_with_a_clear_error() {
        assert!(check_device(Precision::Fp32, Device::Cpu).is_ok());
        for mode in [Precision::Bf16, Precision::F16] {
            let err = check_device(mode, Device::Cpu).unwrap_err().to_string();
            assert!(err.contains("amp") && err.contains("CUDA"), "{err}");
            assert!(check_device(mode, Device::Cuda(0)).is_ok());
        }
    }

    #[test]
    fn autocast_runs_the_forward_in_bf16_and_returns_fp32() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let off = Autocast::new(Precision::Fp32, Device::Cpu);
        let exact = off.run(|| a.matmul(&b));
        let mut inner_kind = Kind::Float;
        let bf16 = Autocast::new(Precision::Bf16, Device::Cpu).run(|| {
            let out = a.matmul(&b);
            inner_kind = out.kind();
            out
        });
        assert_eq!(inner_kind, Kind::BFloat16, "the matmul ran in bf16");
        assert_eq!(bf16.kind(), Kind::Float);
        let err = (&bf16 - &exact).abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.1, "bf16 rounding, not garbage: {err}");
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast off again");
    }
}
