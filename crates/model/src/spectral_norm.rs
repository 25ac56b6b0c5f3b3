//! Spectral normalization (Miyato et al. 2018) of a weight, as `torch.nn.utils.spectral_norm`
//! does it (tch has none).
//!
//! The trained weight is stored as `weight_orig`; the layer uses `weight_orig / sigma`, where
//! sigma estimates the largest singular value of `weight_orig` reshaped to
//! [out_channels, in_channels * kh * kw] (PyTorch's `dim = 0`). Two non-trainable variables of
//! the same VarStore, `weight_u` [out] and `weight_v` [in * kh * kw], hold the power-iteration
//! state, so `VarStore::save`/`load` keep them with the weights and a resumed or reloaded D
//! normalizes exactly as before. With W the reshaped weight:
//!
//! - training forward: one power iteration, in place, without gradient:
//!   `v = normalize(W^T u)`, then `u = normalize(W v)`, with `normalize(x) = x / max(|x|, eps)`;
//! - every forward: `sigma = u . (W v)` with u, v treated as constants (gradients flow through
//!   W only), weight = `weight_orig / sigma`;
//! - evaluation forward: no iteration, the stored u and v are used as they are.
//!
//! This is PyTorch's order exactly (see `torch/nn/utils/spectral_norm.py`), which the parity
//! test in `tests/parity.rs` checks against the PyTorch twin.

use tch::nn;
use tch::{Kind, Tensor};

/// The spectral-norm state of one weight.
#[derive(Debug)]
pub struct SpectralNorm {
    /// `weight_orig`: the trained, unnormalized weight [out, in, kh, kw].
    weight_orig: Tensor,
    /// `weight_u` [out], non-trainable.
    u: Tensor,
    /// `weight_v` [in * kh * kw], non-trainable.
    v: Tensor,
    eps: f64,
}

impl SpectralNorm {
    /// Creates `weight_orig` of shape `dims` (initialised with `init`) and its `weight_u`,
    /// `weight_v` under `path`; u and v start as normalized N(0, 1) vectors as in PyTorch.
    pub fn new(path: &nn::Path, dims: &[i64], init: nn::Init, eps: f64) -> Self {
        let weight_orig = path.var("weight_orig", dims, init);
        let rows = dims.first().copied().unwrap_or(1);
        let cols: i64 = dims.iter().skip(1).product();
        let u = path.zeros_no_train("weight_u", &[rows]);
        let v = path.zeros_no_train("weight_v", &[cols]);
        tch::no_grad(|| {
            u.shallow_clone()
                .copy_(&normalize(&Tensor::randn_like(&u), eps));
            v.shallow_clone()
                .copy_(&normalize(&Tensor::randn_like(&v), eps));
        });
        Self {
            weight_orig,
            u,
            v,
            eps,
        }
    }

    /// The trained, unnormalized weight.
    pub fn weight_orig(&self) -> &Tensor {
        &self.weight_orig
    }

    /// The left singular vector estimate `weight_u`.
    pub fn u(&self) -> &Tensor {
        &self.u
    }

    /// The right singular vector estimate `weight_v`.
    pub fn v(&self) -> &Tensor {
        &self.v
    }

    /// `weight_orig` as the matrix whose spectral norm is taken: [out, in * kh * kw].
    fn matrix(&self) -> Tensor {
        let rows = self.weight_orig.size().first().copied().unwrap_or(1);
        self.weight_orig.reshape([rows, -1])
    }

    /// One power iteration: updates u and v in place (no gradient).
    pub fn power_iteration(&self) {
        tch::no_grad(|| {
            let w = self.matrix().detach();
            let v = normalize(&w.tr().mv(&self.u), self.eps);
            self.v.shallow_clone().copy_(&v);
            let u = normalize(&w.mv(&self.v), self.eps);
            self.u.shallow_clone().copy_(&u);
        });
    }

    /// The current estimate `u . (W v)` of the largest singular value (differentiable with
    /// respect to `weight_orig`; u and v are constants).
    pub fn sigma(&self) -> Tensor {
        let u = self.u.detach().copy();
        let v = self.v.detach().copy();
        u.dot(&self.matrix().mv(&v))
    }

    /// The normalized weight `weight_orig / sigma`, after one power iteration when `train`.
    pub fn weight(&self, train: bool) -> Tensor {
        if train {
            self.power_iteration();
        }
        let sigma = self.sigma();
        tracing::trace!(
            sigma = sigma.to_kind(Kind::Double).double_value(&[]),
            "spectral norm"
        );
        &self.weight_orig / sigma
    }
}

/// `torch.nn.functional.normalize(x, dim=0, eps)` for a vector: x / max(|x|_2, eps).
fn normalize(x: &Tensor, eps: f64) -> Tensor {
    x / x.norm().clamp_min(eps)
}
