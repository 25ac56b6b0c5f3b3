//! Self-attention over the positions of a feature map (SAGAN: Zhang et al. 2019, "Self-Attention
//! Generative Adversarial Networks"), used at the bottleneck of the registration network R
//! (`RegistrationConfig::attention`).
//!
//! A conv UNet sees a neighbourhood that grows with depth, but a displacement field for a large
//! misalignment (a whole lung shifted by breathing) benefits from relating distant positions
//! directly. With x the bottleneck features [B, C, H, W] and N = H * W positions:
//!
//! ```text
//! q = Wq x   [B, C', N]      1x1 conv, C' = max(C / 8, 1)
//! k = Wk x   [B, C', N]      1x1 conv
//! v = Wv x   [B, C,  N]      1x1 conv
//! attn = softmax over j of (q_i . k_j)          [B, N, N]  (row i: where position i looks)
//! o_i = sum_j attn[i, j] v_j                    [B, C, N]
//! out = gamma * o + x                           gamma: a learned scalar, starting at 0
//! ```
//!
//! There is no 1/sqrt(C') scale, as in SAGAN. Because gamma starts at 0 the block is the
//! identity at initialisation: R starts exactly as without it (still near the identity
//! transform) and learns how much non-local context to mix in.
//!
//! Variables (under the block's path, `attn` in R): `query.{weight,bias}`,
//! `key.{weight,bias}`, `value.{weight,bias}`, `gamma` [1]. Convs use PyTorch's default
//! `Conv2d` initialisation (Kaiming-uniform with a = sqrt(5), biases uniform in +-1/sqrt(fan_in)),
//! tch's defaults too.
//!
//! # Memory
//! The attention matrix has N^2 entries per image, N = (H / 2^depth) * (W / 2^depth), and
//! autograd keeps it (and its softmax) for the backward pass. For R's default depth 3:
//! 256^2 crops give N = 32 * 32 = 1024, a 1024 x 1024 matrix = 4 MiB per image in f32 (x2 with
//! the softmax saved); 512^2 gives N = 4096, 64 MiB per image (x2), i.e. ~0.5 GiB at batch 4.
//! With the `reggan` preset (depth 4) the same sizes give N = 256 (256 KiB) and 1024 (4 MiB).
//! Its FLOPs (two batched matrix products, 2 * B * N^2 * (C' + C) MACs) are in
//! [`crate::flops::registration_convs`].

use tch::nn;
use tch::{Kind, Tensor};

/// Channels of the query and key projections for `channels` input channels (SAGAN's C / 8,
/// at least 1).
pub fn query_channels(channels: i64) -> i64 {
    (channels / 8).max(1)
}

/// The SAGAN self-attention block.
#[derive(Debug)]
pub struct SelfAttention {
    query: nn::Conv2D,
    key: nn::Conv2D,
    value: nn::Conv2D,
    /// Residual scale [1], starts at 0.
    gamma: Tensor,
}

impl SelfAttention {
    /// Builds the block's variables under `path` for `channels` feature channels.
    pub fn new(path: &nn::Path, channels: i64) -> Self {
        let qc = query_channels(channels);
        let conv = |name: &str, c_out: i64| {
            nn::conv2d(path / name, channels, c_out, 1, nn::ConvConfig::default())
        };
        let block = Self {
            query: conv("query", qc),
            key: conv("key", qc),
            value: conv("value", channels),
            gamma: path.var("gamma", &[1], nn::Init::Const(0.0)),
        };
        tracing::debug!(
            channels,
            query_channels = qc,
            "building bottleneck self-attention"
        );
        block
    }

    /// The learned residual scale (0 at initialisation).
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// The block's trainable tensors: query, key and value weights and biases, and gamma.
    pub fn parameters(&self) -> Vec<&Tensor> {
        let mut out = Vec::with_capacity(7);
        for conv in [&self.query, &self.key, &self.value] {
            out.push(&conv.ws);
            if let Some(bs) = &conv.bs {
                out.push(bs);
            }
        }
        out.push(&self.gamma);
        out
    }

    /// `x + gamma * attention(x)`.
    ///
    /// # Shapes
    /// `x`: [batch, channels, height, width] -> [batch, channels, height, width]; the
    /// intermediate attention matrix is [batch, height * width, height * width].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (b, c) = (size[0], size[1]);
        // [batch, C', N] -> [batch, N, C']
        let q = x.apply(&self.query).reshape([b, -1, size[2] * size[3]]);
        let q = q.permute([0, 2, 1]);
        // [batch, C', N]
        let k = x.apply(&self.key).reshape([b, -1, size[2] * size[3]]);
        // [batch, C, N]
        let v = x.apply(&self.value).reshape([b, c, -1]);
        // [batch, N (query i), N (key j)], each row a distribution over j
        let attn = q.bmm(&k).softmax(-1, Kind::Float);
        // o[:, :, i] = sum_j v[:, :, j] attn[i, j]: [batch, C, N]
        let o = v.bmm(&attn.permute([0, 2, 1]));
        let o = o.reshape(size.as_slice());
        &o * &self.gamma + x
    }
}
