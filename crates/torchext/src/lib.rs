//! The few libtorch functions that tch 0.24 does not bind, behind safe Rust functions.
//!
//! * [`fused_adam_`]: `at::_fused_adam_`, the one-pass Adam kernel that
//!   `torch.optim.Adam(fused=True)` calls (CPU and CUDA). tch's generator skips functions
//!   that return nothing and mutate tensor lists, so it has no binding.
//! * [`unscale_check_`]: `at::_amp_foreach_non_finite_check_and_unscale_`, the kernel of
//!   `GradScaler.unscale_` (multiplies gradients by `1/scale` and flags inf/NaN), over a list.
//! * [`leaky_relu`]: `at::leaky_relu(x, slope)`: tch binds only the default slope 0.01, and
//!   composing it from `where`/`gt`/`mul` costs three kernels and three tensors each way.
//! * [`clear_grads`]: `p.grad = None` (`at::Tensor::mutable_grad().reset()`): tch can only
//!   zero a gradient in place.
//! * [`AutocastGuard`]: per-device autocast with a chosen dtype. `tch::autocast` only
//!   toggles libtorch's deprecated `at::autocast::set_enabled(bool)` (CUDA, default dtype
//!   f16) and does nothing when CUDA is absent, so it cannot do bf16 or CPU autocast.
//!
//! * [`dist`]: PyTorch's distributed engine, c10d (TCPStore, PrefixStore, ProcessGroupGloo),
//!   which tch does not bind at all.
//!
//! The C++ side (`csrc/shim.cpp`, `csrc/dist.cpp`) catches every exception and returns its message; here it
//! becomes a [`TorchExtError`]. Argument checks that libtorch would turn into exceptions deep
//! in a kernel (list lengths, devices) are made here first with clearer messages.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;

use tch::{Device, Kind, Tensor};
use thiserror::Error;
use tracing::trace;

pub mod dist;

/// A libtorch call that failed, with libtorch's message.
#[derive(Debug, Error)]
pub enum TorchExtError {
    #[error("{op}: {message}")]
    Torch { op: &'static str, message: String },
    #[error("{op}: {problem}")]
    Invalid { op: &'static str, problem: String },
}

/// A tch tensor handle as the shim sees it (`at::Tensor*`).
pub(crate) type Raw = *mut std::ffi::c_void;

mod ffi {
    use super::*;
    extern "C" {
        pub fn torchext_free_error(message: *mut c_char);
        pub fn torchext_set_deterministic(on: bool, warn_only: bool) -> *mut c_char;
        pub fn torchext_deterministic() -> bool;
        pub fn torchext_torch_version(major: *mut c_int, minor: *mut c_int, patch: *mut c_int);
        #[allow(clippy::too_many_arguments)]
        pub fn torchext_fused_adam(
            params: *const Raw,
            grads: *const Raw,
            exp_avgs: *const Raw,
            exp_avg_sqs: *const Raw,
            state_steps: *const Raw,
            n: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            grad_scale: Raw,
            found_inf: Raw,
        ) -> *mut c_char;
        pub fn torchext_unscale_check(
            grads: *const Raw,
            n: usize,
            found_inf: Raw,
            inv_scale: Raw,
        ) -> *mut c_char;
        pub fn torchext_clear_grads(tensors: *const Raw, n: usize) -> *mut c_char;
        pub fn torchext_leaky_relu(x: Raw, slope: f64, out: *mut Raw) -> *mut c_char;
        pub fn torchext_autocast_get(
            device: c_int,
            enabled: *mut bool,
            dtype: *mut c_int,
        ) -> *mut c_char;
        pub fn torchext_autocast_set(device: c_int, enabled: bool, dtype: c_int) -> *mut c_char;
        pub fn torchext_autocast_enter(depth: *mut c_int) -> *mut c_char;
        pub fn torchext_autocast_exit(depth: *mut c_int) -> *mut c_char;
    }
}

/// Turns the shim's returned message into a result (and frees it).
pub(crate) fn check(op: &'static str, message: *mut c_char) -> Result<(), TorchExtError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'ed by the shim, freed once
    // here after copying.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::torchext_free_error(message) };
    Err(TorchExtError::Torch { op, message: text })
}

/// The libtorch version `(major, minor, patch)` this crate was compiled against (the headers
/// of the build's `LIBTORCH`, which tch links too). `scripts/torch-version.env` names the one
/// the project pins; `tests/torch_version.rs` checks that they agree.
pub fn torch_version() -> (u32, u32, u32) {
    let (mut major, mut minor, mut patch): (c_int, c_int, c_int) = (0, 0, 0);
    // SAFETY: the shim writes three ints through the valid pointers and keeps none.
    unsafe { ffi::torchext_torch_version(&mut major, &mut minor, &mut patch) };
    let u = |v: c_int| u32::try_from(v).unwrap_or(0);
    (u(major), u(minor), u(patch))
}

fn raw(t: &Tensor) -> Raw {
    t.as_ptr() as Raw
}

pub(crate) fn raws(ts: &[&Tensor]) -> Vec<Raw> {
    ts.iter().map(|t| raw(t)).collect()
}

/// Adam hyperparameters of one fused update (torch's parameter group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// The tensors of one parameter for [`fused_adam_`]. All are updated in place except `grad`
/// (which the kernel only reads, unless `grad_scale` is given: then it is unscaled in place).
#[derive(Debug)]
pub struct AdamSlotRefs<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    /// torch's `state['step']` for fused Adam: a float32 scalar tensor on the parameter's
    /// device, incremented by the kernel.
    pub step: &'a Tensor,
}

/// One `torch.optim.Adam(fused=True)` update (no amsgrad, no maximize) of every slot, in
/// one call to `at::_fused_adam_`: per element one pass that reads the parameter, gradient
/// and moments and writes parameter and moments, with no temporaries.
///
/// `grad_scale` / `found_inf` are GradScaler's optional inputs: gradients are divided by
/// `grad_scale` inside the kernel, and nothing is updated where `found_inf` is non-zero.
/// Must run under `no_grad` (parameters are leaves that require gradients).
pub fn fused_adam_(
    slots: &[AdamSlotRefs<'_>],
    hyper: FusedAdamParams,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<(), TorchExtError> {
    const OP: &str = "at::_fused_adam_";
    if slots.is_empty() {
        return Ok(());
    }
    for s in slots {
        if s.step.kind() != Kind::Float || s.step.numel() != 1 {
            return Err(TorchExtError::Invalid {
                op: OP,
                problem: format!(
                    "state step must be a float32 scalar, is {:?} {:?}",
                    s.step.kind(),
                    s.step.size()
                ),
            });
        }
    }
    fn col<'a>(slots: &[AdamSlotRefs<'a>], f: fn(&AdamSlotRefs<'a>) -> &'a Tensor) -> Vec<Raw> {
        slots.iter().map(|s| raw(f(s))).collect()
    }
    let (p, g, m, v, st) = (
        col(slots, |s| s.param),
        col(slots, |s| s.grad),
        col(slots, |s| s.exp_avg),
        col(slots, |s| s.exp_avg_sq),
        col(slots, |s| s.step),
    );
    trace!(tensors = slots.len(), ?hyper, "fused Adam");
    // SAFETY: every pointer is a live tch tensor handle (`at::Tensor*`) borrowed for the
    // call; the five arrays have `slots.len()` entries; the optional ones may be null.
    let msg = unsafe {
        ffi::torchext_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            st.as_ptr(),
            slots.len(),
            hyper.lr,
            hyper.beta1,
            hyper.beta2,
            hyper.weight_decay,
            hyper.eps,
            grad_scale.map_or(std::ptr::null_mut(), raw),
            found_inf.map_or(std::ptr::null_mut(), raw),
        )
    };
    check(OP, msg)
}

/// GradScaler's unscale: every gradient is multiplied in place by `inv_scale` (a float32
/// one-element tensor), and `found_inf` (a float32 one-element tensor) is set to 1 when any
/// of them holds an inf or NaN (it is never reset to 0 here). All on one device.
pub fn unscale_check_(
    grads: &[&Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) -> Result<(), TorchExtError> {
    const OP: &str = "at::_amp_foreach_non_finite_check_and_unscale_";
    if grads.is_empty() {
        return Ok(());
    }
    for (what, t) in [("found_inf", found_inf), ("inv_scale", inv_scale)] {
        if t.kind() != Kind::Float || t.numel() != 1 {
            return Err(TorchExtError::Invalid {
                op: OP,
                problem: format!(
                    "{what} must be a one-element float32 tensor, is {:?} {:?}",
                    t.kind(),
                    t.size()
                ),
            });
        }
    }
    let g = raws(grads);
    // SAFETY: live tensor handles borrowed for the call; `g` has `grads.len()` entries.
    let msg =
        unsafe { ffi::torchext_unscale_check(g.as_ptr(), g.len(), raw(found_inf), raw(inv_scale)) };
    check(OP, msg)
}

/// `torch.nn.functional.leaky_relu(x, slope)`: libtorch's own kernel, differentiable (its
/// autograd formula is libtorch's), for any slope.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor, TorchExtError> {
    let mut out: Raw = std::ptr::null_mut();
    // SAFETY: `x` is a live tensor handle borrowed for the call; on success the shim writes a
    // fresh `new at::Tensor` into `out`, which tch owns from here on (it frees it with
    // `delete`, as every tensor libtch returns).
    let msg = unsafe { ffi::torchext_leaky_relu(raw(x), slope, &mut out) };
    check("at::leaky_relu", msg)?;
    if out.is_null() {
        return Err(TorchExtError::Invalid {
            op: "at::leaky_relu",
            problem: "no result".into(),
        });
    }
    // SAFETY: a non-null `at::Tensor*` just allocated by the shim, owned by nobody else.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// Drops the gradient of every tensor in `tensors` (PyTorch's `p.grad = None`, what
/// `Optimizer.zero_grad()` does by default since PyTorch 2.0): `grad()` is undefined
/// afterwards, and the next backward pass writes a fresh gradient instead of adding into a
/// zeroed one. Saves one write of every gradient per step, and an optimizer skips variables
/// whose gradient stays undefined.
pub fn clear_grads(tensors: &[&Tensor]) -> Result<(), TorchExtError> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = raws(tensors);
    // SAFETY: live tensor handles borrowed for the call; `t` has `tensors.len()` entries.
    let msg = unsafe { ffi::torchext_clear_grads(t.as_ptr(), t.len()) };
    check("at::Tensor::mutable_grad().reset", msg)
}

/// `torch.use_deterministic_algorithms(on, warn_only)` with cuDNN's deterministic mode and no
/// cuDNN benchmarking: GPU runs repeat where kernels allow. With `warn_only`, an op that has
/// no deterministic kernel (grid sampling's backward on CUDA, for one) warns naming itself and
/// runs anyway; without, it raises. No effect on the CPU kernels this project uses, which are
/// deterministic already.
pub fn set_deterministic(on: bool, warn_only: bool) -> Result<(), TorchExtError> {
    // SAFETY: plain flags in libtorch's global context.
    let msg = unsafe { ffi::torchext_set_deterministic(on, warn_only) };
    check("at::globalContext().setDeterministicAlgorithms", msg)
}

/// Whether deterministic algorithms are on (`torch.are_deterministic_algorithms_enabled()`).
pub fn deterministic() -> bool {
    // SAFETY: reads a flag of libtorch's global context.
    unsafe { ffi::torchext_deterministic() }
}

/// The device family autocast is switched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDevice {
    Cpu,
    Cuda,
}

impl AutocastDevice {
    /// The family of `device`.
    pub fn of(device: Device) -> Self {
        match device {
            Device::Cuda(_) => AutocastDevice::Cuda,
            _ => AutocastDevice::Cpu,
        }
    }

    fn code(self) -> c_int {
        match self {
            AutocastDevice::Cpu => 0,
            AutocastDevice::Cuda => 1,
        }
    }
}

/// c10::ScalarType codes (c10/core/ScalarType.h), stable across libtorch versions.
fn scalar_type_code(kind: Kind) -> Option<c_int> {
    match kind {
        Kind::Half => Some(5),
        Kind::Float => Some(6),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

fn autocast_get(device: AutocastDevice) -> Result<(bool, c_int), TorchExtError> {
    let (mut enabled, mut dtype) = (false, 0);
    // SAFETY: out-pointers to locals.
    let msg = unsafe { ffi::torchext_autocast_get(device.code(), &mut enabled, &mut dtype) };
    check("at::autocast::is_autocast_enabled", msg)?;
    Ok((enabled, dtype))
}

fn autocast_set(device: AutocastDevice, enabled: bool, dtype: c_int) -> Result<(), TorchExtError> {
    // SAFETY: plain values.
    let msg = unsafe { ffi::torchext_autocast_set(device.code(), enabled, dtype) };
    check("at::autocast::set_autocast_enabled", msg)
}

/// Whether autocast is on for `device` in this thread, and its dtype.
pub fn autocast_state(device: AutocastDevice) -> Result<(bool, Option<Kind>), TorchExtError> {
    let (enabled, code) = autocast_get(device)?;
    let kind = [Kind::Half, Kind::Float, Kind::BFloat16]
        .into_iter()
        .find(|k| scalar_type_code(*k) == Some(code));
    Ok((enabled, kind))
}

/// Autocast on for one device family with one dtype while the guard lives (PyTorch's
/// `torch.autocast(device_type, dtype)` context manager). On drop the previous state is
/// restored and, when the outermost region closes, the cast-weight cache is cleared.
///
/// Autocast state is thread-local in libtorch, so the guard is neither `Send` nor `Sync`.
/// Regions nest. Backward passes should run outside the region (as in PyTorch): the
/// gradients then come out in the parameters' dtype (fp32 master weights).
#[derive(Debug)]
pub struct AutocastGuard {
    device: AutocastDevice,
    prev_enabled: bool,
    prev_dtype: c_int,
    _not_send: PhantomData<*const ()>,
}

impl AutocastGuard {
    /// Turns autocast on for `device` with `dtype` (`Kind::Half` or `Kind::BFloat16`).
    pub fn new(device: AutocastDevice, dtype: Kind) -> Result<Self, TorchExtError> {
        let code = match dtype {
            Kind::Half | Kind::BFloat16 => scalar_type_code(dtype),
            _ => None,
        }
        .ok_or_else(|| TorchExtError::Invalid {
            op: "autocast",
            problem: format!("dtype {dtype:?} is not a reduced precision (f16 or bf16)"),
        })?;
        let (prev_enabled, prev_dtype) = autocast_get(device)?;
        autocast_set(device, true, code)?;
        let mut depth = 0;
        // SAFETY: out-pointer to a local.
        let msg = unsafe { ffi::torchext_autocast_enter(&mut depth) };
        if let Err(e) = check("at::autocast::increment_nesting", msg) {
            let _ = autocast_set(device, prev_enabled, prev_dtype);
            return Err(e);
        }
        trace!(?device, ?dtype, depth, "autocast region entered");
        Ok(Self {
            device,
            prev_enabled,
            prev_dtype,
            _not_send: PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let mut depth = 0;
        // SAFETY: out-pointer to a local.
        let msg = unsafe { ffi::torchext_autocast_exit(&mut depth) };
        if let Err(e) = check("at::autocast::decrement_nesting", msg) {
            tracing::error!("leaving autocast: {e}");
        }
        if let Err(e) = autocast_set(self.device, self.prev_enabled, self.prev_dtype) {
            tracing::error!("restoring the autocast state: {e}");
        }
        trace!(device = ?self.device, depth, "autocast region left");
    }
}

/// Runs `f` with autocast on for `device` in `dtype` (see [`AutocastGuard`]).
pub fn with_autocast<T>(
    device: AutocastDevice,
    dtype: Kind,
    f: impl FnOnce() -> T,
) -> Result<T, TorchExtError> {
    let _guard = AutocastGuard::new(device, dtype)?;
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_autocast_runs_matmul_in_bf16_and_restores_the_state() {
        let a = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        assert!(!autocast_state(AutocastDevice::Cpu).unwrap().0);
        let out = with_autocast(AutocastDevice::Cpu, Kind::BFloat16, || {
            assert!(autocast_state(AutocastDevice::Cpu).unwrap().0);
            // nested region keeps it on
            let inner =
                with_autocast(AutocastDevice::Cpu, Kind::BFloat16, || a.matmul(&a)).unwrap();
            assert!(autocast_state(AutocastDevice::Cpu).unwrap().0);
            (a.matmul(&a), inner)
        })
        .unwrap();
        assert_eq!(
            out.0.kind(),
            Kind::BFloat16,
            "matmul is on CPU autocast's bf16 list"
        );
        assert_eq!(out.1.kind(), Kind::BFloat16);
        assert!(!autocast_state(AutocastDevice::Cpu).unwrap().0);
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        assert!(AutocastGuard::new(AutocastDevice::Cpu, Kind::Double).is_err());
    }

    #[test]
    fn unscale_check_flags_infinities() {
        let g1 = Tensor::from_slice(&[2.0f32, 4.0]);
        let g2 = Tensor::from_slice(&[8.0f32]);
        let found = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let inv = Tensor::from_slice(&[0.5f32]);
        unscale_check_(&[&g1, &g2], &found, &inv).unwrap();
        assert_eq!(Vec::<f32>::try_from(&g1).unwrap(), vec![1.0, 2.0]);
        assert_eq!(found.double_value(&[0]), 0.0);
        let g3 = Tensor::from_slice(&[f32::INFINITY, 1.0]);
        unscale_check_(&[&g3], &found, &inv).unwrap();
        assert_eq!(found.double_value(&[0]), 1.0);
        assert!(unscale_check_(&[&g1], &found, &Tensor::from(0.5f64)).is_err());
    }

    #[test]
    fn deterministic_mode_switches_libtorchs_flag() {
        let before = deterministic();
        set_deterministic(true, true).unwrap();
        assert!(deterministic());
        set_deterministic(false, false).unwrap();
        assert!(!deterministic());
        set_deterministic(before, true).unwrap();
    }

    #[test]
    fn clear_grads_leaves_gradients_undefined_and_backward_writes_fresh_ones() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        (&a * 2.0).sum(Kind::Float).backward();
        (&b * 5.0).sum(Kind::Float).backward();
        assert!(a.grad().defined() && b.grad().defined());
        clear_grads(&[&a, &b]).unwrap();
        assert!(!a.grad().defined(), "a's gradient survived");
        assert!(!b.grad().defined(), "b's gradient survived");
        // a fresh gradient, not 2 + 3 accumulated onto the old one
        (&a * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), vec![3.0, 3.0]);
        assert!(!b.grad().defined());
        clear_grads(&[]).unwrap();
    }

    #[test]
    fn leaky_relu_matches_the_composed_formula_in_value_and_gradient() {
        let x = Tensor::from_slice(&[-2.0f64, -0.5, 0.0, 0.25, 3.0]).set_requires_grad(true);
        let y = leaky_relu(&x, 0.2).unwrap();
        assert_eq!(
            Vec::<f64>::try_from(&y).unwrap(),
            vec![-0.4, -0.1, 0.0, 0.25, 3.0]
        );
        (&y * Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0]))
            .sum(Kind::Double)
            .backward();
        // slope where x <= 0 (PyTorch: x > 0 ? 1 : slope), 1 where x > 0
        assert_eq!(
            Vec::<f64>::try_from(x.grad()).unwrap(),
            vec![0.2, 0.4, 0.6000000000000001, 4.0, 5.0]
        );
        // a slope other than tch's fixed 0.01 really is used, on float32 too
        let z = leaky_relu(&Tensor::from_slice(&[-1.0f32]), 0.3).unwrap();
        assert_eq!(Vec::<f32>::try_from(z).unwrap(), vec![-0.3]);
    }
}
