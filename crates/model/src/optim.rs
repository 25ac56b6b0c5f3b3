//! Adam over a [`tch::nn::VarStore`]'s trainable variables, with state that can be saved and
//! loaded, for an exact resume.
//!
//! tch's `nn::Optimizer` keeps Adam's moments inside libtorch with no way to read or write
//! them, so a resumed run would restart its moments from zero. This Adam holds its moments as
//! tensors keyed by variable name, and reproduces `torch.optim.Adam` in one of two ways
//! ([`AdamImpl`], `AdamConfig::implementation`):
//!
//! * **`fused`** (the default): libtorch's one-pass kernel `at::_fused_adam_`, called
//!   through the `torchext` shim: exactly what `torch.optim.Adam(fused=True)` runs (on the
//!   CPU since PyTorch 2.4, and on CUDA). One call updates every variable; each element is
//!   read and written once, with no temporaries. Measured on the default preset's G+R
//!   (62M parameters, 2 CPU threads): see `benches`/the README's benchmark section.
//! * **`loop`**: `_single_tensor_adam` (`torch/optim/adam.py`, torch's default on the CPU
//!   with `foreach=False`), op for op with in-place ops (`lerp_`, `mul_`, `addcmul_`,
//!   `addcdiv_`) and three temporaries per variable (the denominator, and the scaled
//!   factors, because tch's `addcmul_`/`addcdiv_` take no `value`). Equal to torch's
//!   single-tensor path to float rounding; kept as the reference and for debugging.
//!
//! Both compute:
//!
//! ```text
//! step += 1
//! g = grad + weight_decay * param                  (L2 penalty, only when weight_decay != 0)
//! m = lerp(m, g, 1 - beta1)                        (= beta1 m + (1 - beta1) g)
//! v = beta2 v + (1 - beta2) g^2
//! denom = sqrt(v) / sqrt(1 - beta2^step) + eps     (eps added after the bias correction)
//! param -= lr / (1 - beta1^step) * m / denom
//! ```
//!
//! In `loop`, the bias corrections and step size are computed in f64 on the host from the
//! step count (as Python floats are in torch); in `fused`, the kernel computes them from a
//! float32 step tensor per variable (torch's fused `state['step']`). Nothing is read back
//! from the device either way (except [`Adam::step_unless`]'s flag in `loop`). Checked against torch (single-tensor and `fused=True`) step
//! for step in `tests/optim_adam.rs`.
//!
//! Parameter groups: [`Adam::scale_lr`] gives the variables under a name prefix a factor of
//! the learning rate (torch's parameter group with `lr = factor * lr`, the other
//! hyperparameters shared): the fused kernel then runs once per group, as torch's does. The
//! factor is a run setting (the caller's configuration), not state: the file does not hold it.
//!
//! Like torch: [`Adam::zero_grad`] drops the gradients (`set_to_none=True`, torch's default
//! since 2.0) rather than writing zeros, and a variable whose gradient is undefined at
//! [`Adam::step`] is skipped (its moments and step count do not move).
//! [`Adam::step_unless`] is the step of a fused optimizer under torch's GradScaler: the kernel
//! reads a device flag and does nothing when it is set, so a step can be called off for
//! non-finite values without a host round trip.
//!
//! State file (safetensors): `exp_avg.NAME`, `exp_avg_sq.NAME` (float tensors shaped like the
//! variable), `step.NAME` (int64 scalar: torch keeps a step count per parameter), `step` (int64
//! scalar: calls to [`Adam::step`]) and `hyper.lr`, `hyper.beta1`, `hyper.beta2`, `hyper.eps`,
//! `hyper.weight_decay` (f64 scalars), which [`Adam::load`] restores like torch's
//! `load_state_dict` restores its parameter group. The file is the same for both
//! implementations (the implementation is a run setting, not state: a state saved by one
//! loads into the other).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use thiserror::Error;
use tracing::{debug, info, trace, warn};

/// Which kernel applies the update (both compute `torch.optim.Adam`; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdamImpl {
    /// `at::_fused_adam_`, as `torch.optim.Adam(fused=True)`: one pass, no temporaries.
    #[default]
    Fused,
    /// torch's single-tensor loop (`foreach=False`) with in-place ops (equal to float rounding).
    Loop,
}

/// Adam hyperparameters. `Default` is RegGAN's: lr 1e-4, betas (0.5, 0.999), and the fused
/// kernel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (torch.optim.Adam's `weight_decay`, not AdamW's).
    pub weight_decay: f64,
    /// `"fused"` (default) or `"loop"`.
    pub implementation: AdamImpl,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            implementation: AdamImpl::Fused,
        }
    }
}

impl AdamConfig {
    /// Checks the ranges torch.optim.Adam checks: `lr >= 0`, `eps >= 0`, betas in [0, 1),
    /// `weight_decay >= 0`.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad =
            |what: &str, v: f64| OptimError::InvalidConfig(format!("{what} out of range: {v}"));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(bad("lr", self.lr));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(bad("eps", self.eps));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(name, b));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("weight_decay", self.weight_decay));
        }
        Ok(())
    }
}

/// Checks a learning-rate factor ([`Adam::scale_lr`]): finite and > 0. The error says what is
/// wrong with the value; callers add what it was for.
pub fn check_lr_factor(factor: f64) -> Result<(), String> {
    if factor.is_finite() && factor > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "a learning-rate factor must be finite and > 0, not {factor}"
        ))
    }
}

/// Errors of the optimizer and its state files.
#[derive(Debug, Error)]
pub enum OptimError {
    #[error("invalid Adam configuration: {0}")]
    InvalidConfig(String),
    #[error("optimizer state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("optimizer state {path}: {source}")]
    Torch {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("optimizer state {path}: {problem}")]
    Mismatch { path: PathBuf, problem: String },
    #[error("fused Adam step: {0}")]
    Kernel(#[from] torchext::TorchExtError),
}

/// Per-variable state.
struct Slot {
    /// The variable (shares storage with the VarStore's).
    var: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// torch's `state['step']`: updates applied to this variable.
    step: i64,
    /// The same count as a float32 scalar on the variable's device: the fused kernel's
    /// `state_steps`, which it increments itself.
    step_t: Tensor,
    /// This variable's learning rate as a factor of the optimizer's ([`Adam::scale_lr`]).
    lr_factor: f64,
}

/// Adam over the trainable variables of one VarStore, in name order.
pub struct Adam {
    cfg: AdamConfig,
    /// Keyed by variable name: a deterministic order independent of construction order.
    slots: BTreeMap<String, Slot>,
    /// Calls to [`Adam::step`].
    steps: i64,
    /// The variables the last fused [`Adam::step_unless`] counted on the host, for
    /// [`Adam::uncount_step`] (the device's counts follow its flag by themselves).
    counted_off_host: Option<Vec<String>>,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("cfg", &self.cfg)
            .field("variables", &self.slots.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl Adam {
    /// An optimizer over `vs`'s trainable variables (those created trainable; a later
    /// `vs.freeze()` does not remove them), moments at zero.
    ///
    /// Non-trainable variables (spectral-norm u vectors, for example) are left alone. Fails
    /// only if `cfg` is out of range ([`AdamConfig::validate`]).
    pub fn new(vs: &VarStore, cfg: AdamConfig) -> Result<Self, OptimError> {
        cfg.validate()?;
        let slots: BTreeMap<String, Slot> = trainable_named(vs)
            .into_iter()
            .map(|(name, var)| {
                let opts = (var.kind(), var.device());
                let slot = Slot {
                    exp_avg: Tensor::zeros(var.size(), opts),
                    exp_avg_sq: Tensor::zeros(var.size(), opts),
                    step_t: Tensor::zeros([], (Kind::Float, var.device())),
                    var,
                    step: 0,
                    lr_factor: 1.0,
                };
                (name, slot)
            })
            .collect();
        let numel: usize = slots.values().map(|s| s.var.numel()).sum();
        debug!(
            variables = slots.len(),
            parameters = numel,
            ?cfg,
            "Adam optimizer created"
        );
        Ok(Self {
            cfg,
            slots,
            steps: 0,
            counted_off_host: None,
        })
    }

    /// The configuration in use (with the current learning rate).
    pub fn config(&self) -> AdamConfig {
        self.cfg
    }

    /// Current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate for the next steps (schedules call this every step).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Gives the variables whose names start with `prefix` (`"registration."`, say) the
    /// learning rate `factor * lr` from now on, through every later [`Adam::set_lr`] (a
    /// parameter group of torch's with its own lr). Returns how many variables it covers.
    /// Fails for a factor that is not finite and positive.
    pub fn scale_lr(&mut self, prefix: &str, factor: f64) -> Result<usize, OptimError> {
        check_lr_factor(factor)
            .map_err(|e| OptimError::InvalidConfig(format!("{prefix}*: {e}")))?;
        let mut covered = 0usize;
        for (_, slot) in self.slots.iter_mut().filter(|(n, _)| n.starts_with(prefix)) {
            slot.lr_factor = factor;
            covered += 1;
        }
        debug!(
            prefix,
            factor,
            variables = covered,
            "Adam learning-rate factor"
        );
        Ok(covered)
    }

    /// The learning-rate factor of variable `name` (1 unless [`Adam::scale_lr`] set one);
    /// `None` for a variable this optimizer does not hold.
    pub fn lr_factor(&self, name: &str) -> Option<f64> {
        self.slots.get(name).map(|s| s.lr_factor)
    }

    /// Number of [`Adam::step`] calls so far (restored by [`Adam::load`]).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Names of the optimized variables, sorted.
    pub fn variable_names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Drops the gradients of the optimized variables (torch's `zero_grad(set_to_none=True)`):
    /// the next backward pass writes fresh gradients instead of adding into zeros, which
    /// saves a write of every gradient per step. Should libtorch refuse (it does not for
    /// ordinary leaves), the gradients are zeroed in place instead, which computes the same.
    pub fn zero_grad(&mut self) {
        let vars: Vec<&Tensor> = self.slots.values().map(|s| &s.var).collect();
        if let Err(e) = torchext::clear_grads(&vars) {
            warn!("{e}; zeroing the gradients in place instead");
            for slot in self.slots.values_mut() {
                slot.var.zero_grad();
            }
        }
    }

    /// One Adam update of every variable that has a gradient, under `no_grad`.
    ///
    /// If libtorch's fused kernel rejects its inputs (variables of mixed devices or dtypes,
    /// which one VarStore does not produce), the error is logged and this optimizer switches
    /// to the `loop` implementation for this and later steps, which computes the same
    /// update; [`Adam::try_step`] returns the error instead.
    pub fn step(&mut self) {
        if let Err(e) = self.try_step() {
            warn!("{e}; switching this optimizer to the loop implementation");
            self.cfg.implementation = AdamImpl::Loop;
            self.step_unchecked();
        }
    }

    /// [`Adam::step`] that returns the fused kernel's error (nothing is updated then).
    pub fn try_step(&mut self) -> Result<(), OptimError> {
        match self.cfg.implementation {
            AdamImpl::Fused => {
                let _guard = tch::no_grad_guard();
                let updated = self.step_fused(None)?.len();
                self.finish_step(updated);
                Ok(())
            }
            AdamImpl::Loop => {
                self.step_unchecked();
                Ok(())
            }
        }
    }

    /// [`Adam::step`] unless `found_inf` (a one-element float32 tensor on the variables'
    /// device holding exactly 0.0 or 1.0: the fused kernel skips only on 1.0) is set, decided
    /// where the data is. The fused kernel reads the flag
    /// itself (as `torch.optim.Adam(fused=True)` does under a GradScaler), so calling the
    /// step off for non-finite values costs no host round trip; the `loop` implementation
    /// reads the flag first (one sync). A step called off changes no weight, moment or
    /// device step count, but the host-side counters ([`Adam::steps`] and the per-variable
    /// counts saved with the state) still count it until the caller, once it has read the
    /// flag, calls [`Adam::uncount_step`].
    pub fn step_unless(&mut self, found_inf: &Tensor) {
        self.counted_off_host = None;
        if self.cfg.implementation == AdamImpl::Fused {
            let _guard = tch::no_grad_guard();
            match self.step_fused(Some(found_inf)) {
                Ok(counted) => {
                    self.finish_step(counted.len());
                    self.counted_off_host = Some(counted);
                    return;
                }
                Err(e) => {
                    warn!("{e}; switching this optimizer to the loop implementation");
                    self.cfg.implementation = AdamImpl::Loop;
                }
            }
        }
        // loop: the flag is read on the host, and a step called off is not counted at all
        if found_inf.double_value(&[0]) == 0.0 {
            self.step_unchecked();
        } else {
            trace!(step = self.steps, "Adam step called off (flag set)");
        }
    }

    /// Takes back the host-side counts of the last [`Adam::step_unless`], whose flag the
    /// caller has read and found set (the device updated nothing). Does nothing after any
    /// other call, or when the step did not count.
    pub fn uncount_step(&mut self) {
        let Some(counted) = self.counted_off_host.take() else {
            return;
        };
        self.steps -= 1;
        for name in &counted {
            if let Some(slot) = self.slots.get_mut(name) {
                slot.step -= 1;
            }
        }
        debug!(
            step = self.steps,
            variables = counted.len(),
            "Adam step taken back (called off on the device)"
        );
    }

    /// The loop implementation's step (it cannot fail).
    fn step_unchecked(&mut self) {
        let _guard = tch::no_grad_guard();
        let updated = self.step_loop();
        self.finish_step(updated);
    }

    fn finish_step(&mut self, updated: usize) {
        self.steps += 1;
        trace!(step = self.steps, updated, lr = self.cfg.lr, implementation = ?self.cfg.implementation, "Adam step");
    }

    /// All variables with a gradient, one `at::_fused_adam_` call per learning-rate group
    /// (one call without [`Adam::scale_lr`]), called off on the device where `found_inf` is
    /// set. Returns the names of the variables it counted. Fails, with nothing updated, when
    /// the first call fails (the kernel refuses mixed devices or dtypes, which would fail every
    /// group alike); should a later group's call fail, the loop implementation updates that
    /// group and the rest, so every variable is updated once.
    fn step_fused(&mut self, found_inf: Option<&Tensor>) -> Result<Vec<String>, OptimError> {
        // factor -> variables with a gradient, in name order
        let mut groups: Vec<(f64, Vec<String>)> = Vec::new();
        for (name, slot) in &self.slots {
            if !slot.var.grad().defined() {
                continue;
            }
            match groups.iter_mut().find(|(f, _)| *f == slot.lr_factor) {
                Some((_, names)) => names.push(name.clone()),
                None => groups.push((slot.lr_factor, vec![name.clone()])),
            }
        }
        let mut counted = Vec::new();
        for (i, (factor, names)) in groups.iter().enumerate() {
            match self.fused_group(names, self.cfg.lr * factor, found_inf) {
                Ok(()) => counted.extend(names.iter().cloned()),
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    tracing::error!(
                        "{e} (learning-rate group {i} of {}, after the first succeeded); the \
                         loop implementation updates it and the rest",
                        groups.len()
                    );
                    let apply = found_inf.is_none_or(|f| f.double_value(&[0]) == 0.0);
                    let cfg = self.cfg;
                    for (factor, names) in &groups[i..] {
                        for name in names.iter().filter(|_| apply) {
                            if let Some(slot) = self.slots.get_mut(name) {
                                loop_update(slot, &cfg, cfg.lr * factor);
                                counted.push(name.clone());
                            }
                        }
                    }
                    break;
                }
            }
        }
        Ok(counted)
    }

    /// One `at::_fused_adam_` call over `names` (each with a gradient) at learning rate `lr`;
    /// on failure nothing is changed.
    fn fused_group(
        &mut self,
        names: &[String],
        lr: f64,
        found_inf: Option<&Tensor>,
    ) -> Result<(), OptimError> {
        let c = self.cfg;
        let grads: Vec<(&Slot, Tensor)> = names
            .iter()
            .filter_map(|n| self.slots.get(n))
            .map(|slot| (slot, slot.var.grad()))
            .collect();
        // torch's `_fused_adam` increments `state_steps` before the kernel, which reads them.
        for (slot, _) in &grads {
            let mut t = slot.step_t.shallow_clone();
            let _ = t.g_add_scalar_(1.0);
        }
        let refs: Vec<torchext::AdamSlotRefs<'_>> = grads
            .iter()
            .map(|(slot, grad)| torchext::AdamSlotRefs {
                param: &slot.var,
                grad,
                exp_avg: &slot.exp_avg,
                exp_avg_sq: &slot.exp_avg_sq,
                step: &slot.step_t,
            })
            .collect();
        let result = torchext::fused_adam_(
            &refs,
            torchext::FusedAdamParams {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: c.weight_decay,
                eps: c.eps,
            },
            None,
            found_inf,
        );
        if let Err(e) = result {
            for (slot, _) in &grads {
                let mut t = slot.step_t.shallow_clone();
                let _ = t.g_add_scalar_(-1.0);
            }
            return Err(e.into());
        }
        drop(refs);
        drop(grads);
        for name in names {
            let Some(slot) = self.slots.get_mut(name) else {
                continue;
            };
            // torch: `_foreach_sub_(state_steps, found_inf)`: a called-off step does not count
            // on the device
            if let Some(flag) = found_inf {
                let mut t = slot.step_t.shallow_clone();
                let _ = t.g_sub_(&flag.view([]).to_device(t.device()));
            }
            slot.step += 1;
        }
        Ok(())
    }

    /// torch's `_single_tensor_adam` over every variable with a gradient, each at its
    /// group's learning rate ([`loop_update`]).
    fn step_loop(&mut self) -> usize {
        let cfg = self.cfg;
        let mut updated = 0usize;
        for slot in self.slots.values_mut() {
            if slot.var.grad().defined() {
                loop_update(slot, &cfg, cfg.lr * slot.lr_factor);
                updated += 1;
            }
        }
        updated
    }

    /// Writes the optimizer state to `path` (safetensors, atomically: a temporary file in the
    /// same folder, then a rename). Tensors are copied to the CPU for writing.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(3 * self.slots.len() + 6);
        for (name, slot) in &self.slots {
            named.push((
                format!("exp_avg.{name}"),
                slot.exp_avg.to_device(Device::Cpu).contiguous(),
            ));
            named.push((
                format!("exp_avg_sq.{name}"),
                slot.exp_avg_sq.to_device(Device::Cpu).contiguous(),
            ));
            named.push((format!("step.{name}"), Tensor::from(slot.step)));
        }
        named.push(("step".into(), Tensor::from(self.steps)));
        let c = self.cfg;
        for (name, v) in [
            ("lr", c.lr),
            ("beta1", c.beta1),
            ("beta2", c.beta2),
            ("eps", c.eps),
            ("weight_decay", c.weight_decay),
        ] {
            named.push((format!("hyper.{name}"), Tensor::from(v)));
        }
        let tmp = temp_path(path);
        Tensor::write_safetensors(&named, &tmp).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            OptimError::Torch {
                path: path.to_path_buf(),
                source,
            }
        })?;
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            OptimError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
        debug!(path = %path.display(), variables = self.slots.len(), steps = self.steps, "Adam state saved");
        Ok(())
    }

    /// Restores the state written by [`Adam::save`]: moments, step counts and hyperparameters.
    ///
    /// The file must hold exactly this optimizer's variables with the same shapes; otherwise
    /// nothing is changed and the error names the missing, unexpected or mis-shaped entries.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        let mismatch = |problem: String| OptimError::Mismatch {
            path: path.to_path_buf(),
            problem,
        };
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|source| OptimError::Torch {
                path: path.to_path_buf(),
                source,
            })?
            .into_iter()
            .collect();

        let scalar_f64 = |name: &str| -> Result<f64, OptimError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| mismatch(format!("missing entry `{name}`")))?;
            if t.numel() != 1 {
                return Err(mismatch(format!(
                    "`{name}` should be a scalar, has shape {:?}",
                    t.size()
                )));
            }
            Ok(t.to_kind(Kind::Double).double_value(&[]))
        };
        let scalar_i64 = |name: &str| -> Result<i64, OptimError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| mismatch(format!("missing entry `{name}`")))?;
            if t.numel() != 1 || t.kind() != Kind::Int64 {
                return Err(mismatch(format!(
                    "`{name}` should be an int64 scalar, is {:?} {:?}",
                    t.kind(),
                    t.size()
                )));
            }
            Ok(t.int64_value(&[]))
        };

        // 1. The variable sets must agree.
        let in_file: BTreeSet<&str> = tensors
            .keys()
            .filter_map(|k| k.strip_prefix("exp_avg."))
            .collect();
        let ours: BTreeSet<&str> = self.slots.keys().map(String::as_str).collect();
        if in_file != ours {
            let missing: Vec<&str> = ours.difference(&in_file).copied().collect();
            let extra: Vec<&str> = in_file.difference(&ours).copied().collect();
            return Err(mismatch(format!(
                "the variable set differs from the model's ({} in the file, {} in the model); missing: {}; unexpected: {}",
                in_file.len(),
                ours.len(),
                preview(&missing),
                preview(&extra)
            )));
        }

        // 2. Check everything before changing anything.
        let mut staged: Vec<(&str, Tensor, Tensor, i64)> = Vec::with_capacity(self.slots.len());
        for (name, slot) in &self.slots {
            let moment = |prefix: &str| -> Result<Tensor, OptimError> {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| mismatch(format!("missing entry `{key}`")))?;
                if t.size() != slot.var.size() {
                    return Err(mismatch(format!(
                        "`{key}` has shape {:?}, the variable has {:?}",
                        t.size(),
                        slot.var.size()
                    )));
                }
                if t.kind() != slot.var.kind() {
                    return Err(mismatch(format!(
                        "`{key}` is {:?}, the variable is {:?}",
                        t.kind(),
                        slot.var.kind()
                    )));
                }
                Ok(t.to_device(slot.var.device()))
            };
            let (exp_avg, exp_avg_sq) = (moment("exp_avg")?, moment("exp_avg_sq")?);
            let step = scalar_i64(&format!("step.{name}"))?;
            if step < 0 {
                return Err(mismatch(format!("`step.{name}` is negative ({step})")));
            }
            staged.push((name.as_str(), exp_avg, exp_avg_sq, step));
        }
        let steps = scalar_i64("step")?;
        let cfg = AdamConfig {
            lr: scalar_f64("hyper.lr")?,
            beta1: scalar_f64("hyper.beta1")?,
            beta2: scalar_f64("hyper.beta2")?,
            eps: scalar_f64("hyper.eps")?,
            weight_decay: scalar_f64("hyper.weight_decay")?,
            // A run setting, not state: keep this optimizer's.
            implementation: self.cfg.implementation,
        };
        cfg.validate().map_err(|e| mismatch(e.to_string()))?;

        // 3. Commit.
        let staged: Vec<(String, Tensor, Tensor, i64)> = staged
            .into_iter()
            .map(|(n, a, b, s)| (n.to_string(), a, b, s))
            .collect();
        for (name, exp_avg, exp_avg_sq, step) in staged {
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.exp_avg = exp_avg;
                slot.exp_avg_sq = exp_avg_sq;
                slot.step = step;
                slot.step_t = Tensor::from(step as f32).to_device(slot.var.device());
            }
        }
        if cfg != self.cfg {
            info!(from = ?self.cfg, to = ?cfg, "Adam hyperparameters restored from the saved state");
        }
        self.cfg = cfg;
        self.steps = steps;
        debug!(path = %path.display(), variables = self.slots.len(), steps, "Adam state loaded");
        Ok(())
    }
}

/// The trainable variables of `vs` with their names.
///
/// The VarStore keeps names for all variables and a separate, unnamed list of the trainable
/// ones; a named variable is trainable when it is the same tensor (same storage, offset, sizes
/// and strides) as one of that list.
fn trainable_named(vs: &VarStore) -> Vec<(String, Tensor)> {
    let trainable = vs.trainable_variables();
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| trainable.iter().any(|v| v.is_set_to(t)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// `DIR/.NAME.tmp-PID`: a temporary name in the destination's folder (so the rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adam".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// At most five names, then a count.
fn preview(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let shown: Vec<&str> = names.iter().take(5).copied().collect();
    if names.len() > 5 {
        format!("{} and {} more", shown.join(", "), names.len() - 5)
    } else {
        shown.join(", ")
    }
}

/// torch's `_single_tensor_adam` for one variable with a gradient at learning rate `lr`, op
/// for op, in place where tch allows.
fn loop_update(slot: &mut Slot, cfg: &AdamConfig, lr: f64) {
    let AdamConfig {
        beta1,
        beta2,
        eps,
        weight_decay,
        ..
    } = *cfg;
    let grad = slot.var.grad();
    slot.step += 1;
    let _ = slot.step_t.fill_(slot.step as f64);
    // torch: grad = grad.add(param, alpha=weight_decay) (a new tensor, not in place)
    let grad = if weight_decay != 0.0 {
        grad.g_add(&(&slot.var * weight_decay))
    } else {
        grad
    };
    let _ = slot.exp_avg.lerp_(&grad, 1.0 - beta1);
    // torch: exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let _ = slot.exp_avg_sq.g_mul_scalar_(beta2);
    // (tch's addcmul_ has no `value`: it is folded into the first factor.)
    let _ = slot.exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
    // Python floats in torch: `beta ** step` with a float step, i.e. pow().
    let t = slot.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);
    // torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let mut denom = slot.exp_avg_sq.sqrt();
    let _ = denom.g_div_scalar_(bias_correction2_sqrt);
    let _ = denom.g_add_scalar_(eps);
    // torch: param.addcdiv_(exp_avg, denom, value=-step_size)
    // (tch's addcdiv_ has no `value`: it is folded into the numerator.)
    let _ = slot.var.addcdiv_(&(&slot.exp_avg * (-step_size)), &denom);
}
