//! Floating-point operation counts of the networks and of one training step, from the
//! configurations and the input size alone (no tensors are built).
//!
//! # What is counted
//! The convolutions and transposed convolutions, which are nearly all the arithmetic of these
//! networks: one multiply-accumulate (MAC) counts as 2 FLOPs, biases, normalizations,
//! activations, pooling, the warp and the elementwise parts of the losses are not counted. This
//! is the convention of `torch.utils.flop_counter.FlopCounterMode`, so the counts here can be
//! (and are, in `tests/flops.rs` and by `tools/pytorch_twin/bench.py`) checked against it:
//!
//! * a conv with weight `[c_out, c_in / groups, kh, kw]` producing `[b, c_out, h_out, w_out]`
//!   does `b * c_out * (c_in / groups) * kh * kw * h_out * w_out` MACs;
//! * a transposed conv with weight `[c_in, c_out, kh, kw]` on an input `[b, c_in, h_in, w_in]`
//!   does `b * c_in * c_out * kh * kw * h_in * w_in` MACs;
//! * a batched matrix product `[b, n, k] x [b, k, m]` does `b * n * k * m` MACs (R's optional
//!   bottleneck self-attention, [`crate::attention`], has two; its softmax is not counted).
//!
//! # Backward
//! Each conv's backward is two convolutions of the forward's size: the gradient with respect
//! to its input and the one with respect to its weight. Autograd runs only those that are
//! needed, so "backward = 2 x forward" holds per conv whose input and weight both need a
//! gradient, and the step count below follows autograd exactly:
//! * the first conv of G sees the NCCT, which needs no gradient: weight gradient only;
//! * R sees G's output: both gradients everywhere;
//! * D in the G+R update has frozen weights but its input (G's output) needs a gradient: input
//!   gradients only;
//! * D in its own update sees the real CTPA and the detached fake: weight gradients
//!   everywhere, input gradients for all but the first conv;
//! * the SSIM's Gaussian filter (two depthwise 1D convs over 5 stacked statistics, see
//!   [`crate::ssim`]) has a constant window: input gradients only.

use crate::config::{DiscriminatorConfig, GeneratorConfig, ModelConfig, RegistrationConfig};
use crate::registration::registration_channels;
use metrics::SsimParams;
use serde::{Deserialize, Serialize};

/// One convolution of a network for a given input size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvCost {
    /// Variable path of the layer (as in the VarStore), e.g. `down.0.1.conv`.
    pub layer: String,
    /// Multiply-accumulates of its forward pass.
    pub macs: u64,
}

/// Forward FLOPs of a list of convs (2 per MAC).
pub fn forward_flops(convs: &[ConvCost]) -> u64 {
    2 * convs.iter().map(|c| c.macs).sum::<u64>()
}

fn conv_macs(
    batch: u64,
    c_in_per_group: u64,
    c_out: u64,
    k: (u64, u64),
    out_hw: (u64, u64),
) -> u64 {
    batch * c_out * c_in_per_group * k.0 * k.1 * out_hw.0 * out_hw.1
}

fn width(base: i64, max: i64, i: usize) -> u64 {
    base.saturating_mul(1i64 << i.min(62)).min(max).max(0) as u64
}

/// The convs of a [`crate::blocks::UNet`] with these widths on a `[batch, c_in, h, w]` input
/// (`h` and `w` multiples of `2^depth`; other sizes give the counts of the floored sizes).
#[allow(clippy::too_many_arguments)]
fn unet_convs(
    c_in: u64,
    c_out: u64,
    base: i64,
    max: i64,
    depth: usize,
    convs: usize,
    batch: u64,
    h: u64,
    w: u64,
) -> Vec<ConvCost> {
    let wd = |i| width(base, max, i);
    let hw = |i: usize| (h >> i, w >> i);
    let mut out = Vec::new();
    let stage = |out: &mut Vec<ConvCost>, prefix: String, cin: u64, cout: u64, level: usize| {
        for j in 0..convs {
            let c = if j == 0 { cin } else { cout };
            out.push(ConvCost {
                layer: format!("{prefix}.{j}.conv"),
                macs: conv_macs(batch, c, cout, (3, 3), hw(level)),
            });
        }
    };
    // 1. down
    for i in 0..depth {
        let cin = if i == 0 { c_in } else { wd(i - 1) };
        stage(&mut out, format!("down.{i}"), cin, wd(i), i);
    }
    // 2. mid
    let mid_in = if depth == 0 { c_in } else { wd(depth - 1) };
    stage(&mut out, "mid".into(), mid_in, wd(depth), depth);
    // 3. up, deepest first (the order of the forward pass)
    for i in (0..depth).rev() {
        let (hi, wi) = hw(i + 1);
        out.push(ConvCost {
            layer: format!("up.{i}.upconv"),
            macs: batch * wd(i + 1) * wd(i) * 4 * hi * wi,
        });
        stage(&mut out, format!("up.{i}.convs"), 2 * wd(i), wd(i), i);
    }
    // 4. head (1x1)
    out.push(ConvCost {
        layer: "head".into(),
        macs: conv_macs(batch, wd(0), c_out, (1, 1), hw(0)),
    });
    out
}

/// G's convs on a `[batch, in_channels, h, w]` input, in forward order.
pub fn generator_convs(cfg: &GeneratorConfig, batch: u64, h: u64, w: u64) -> Vec<ConvCost> {
    unet_convs(
        cfg.in_channels.max(0) as u64,
        cfg.out_channels.max(0) as u64,
        cfg.base_channels,
        cfg.max_channels,
        cfg.depth,
        cfg.convs_per_stage,
        batch,
        h,
        w,
    )
}

/// R's convs on a pair of `[batch, 1, h, w]` images (with `through_plane`, three moving
/// slices and the fixed one), in forward order; with
/// `cfg.attention`, the bottleneck self-attention's three 1x1 convs (`attn.query`, `attn.key`,
/// `attn.value`) and two matrix products (`attn.scores`: q^T k, `attn.mix`: v attn^T) after the
/// bottleneck stage.
pub fn registration_convs(cfg: &RegistrationConfig, batch: u64, h: u64, w: u64) -> Vec<ConvCost> {
    let (in_channels, out_channels) = registration_channels(cfg);
    let mut convs = unet_convs(
        in_channels as u64,
        out_channels as u64,
        cfg.base_channels,
        cfg.max_channels,
        cfg.depth,
        cfg.convs_per_stage,
        batch,
        h,
        w,
    );
    if cfg.attention {
        let c = width(cfg.base_channels, cfg.max_channels, cfg.depth);
        let attn = attention_costs(c, batch, h >> cfg.depth, w >> cfg.depth);
        // right after the bottleneck stage's last conv, before the first upconv
        let at = convs
            .iter()
            .position(|l| l.layer.starts_with("up.") || l.layer == "head")
            .unwrap_or(convs.len());
        convs.splice(at..at, attn);
    }
    convs
}

/// The costs of [`crate::attention::SelfAttention`] on `[batch, channels, h, w]` features.
fn attention_costs(channels: u64, batch: u64, h: u64, w: u64) -> Vec<ConvCost> {
    let qc = crate::attention::query_channels(channels as i64).max(1) as u64;
    let n = h * w;
    let cost = |layer: &str, macs| ConvCost {
        layer: layer.into(),
        macs,
    };
    vec![
        cost("attn.query", conv_macs(batch, channels, qc, (1, 1), (h, w))),
        cost("attn.key", conv_macs(batch, channels, qc, (1, 1), (h, w))),
        cost(
            "attn.value",
            conv_macs(batch, channels, channels, (1, 1), (h, w)),
        ),
        // [b, N, C'] x [b, C', N]
        cost("attn.scores", batch * n * qc * n),
        // [b, C, N] x [b, N, N]
        cost("attn.mix", batch * channels * n * n),
    ]
}

/// D's convs (4x4, padding 1) on a `[batch, input_channels, h, w]` input, in forward order.
pub fn discriminator_convs(cfg: &DiscriminatorConfig, batch: u64, h: u64, w: u64) -> Vec<ConvCost> {
    let wd = |n| width(cfg.base_channels, cfg.max_channels, n);
    let n = cfg.n_layers;
    let mut plan = vec![(cfg.input_channels().max(0) as u64, wd(0), 2u64)];
    for k in 1..n {
        plan.push((wd(k - 1), wd(k), 2));
    }
    plan.push((wd(n.saturating_sub(1)), wd(n), 1));
    plan.push((wd(n), 1, 1));
    let (mut hh, mut ww) = (h as i64, w as i64);
    let mut out = Vec::with_capacity(plan.len());
    for (k, (cin, cout, stride)) in plan.into_iter().enumerate() {
        // h' = (h + 2 * 1 - 4) / stride + 1
        hh = (hh - 2).div_euclid(stride as i64) + 1;
        ww = (ww - 2).div_euclid(stride as i64) + 1;
        let out_hw = (hh.max(0) as u64, ww.max(0) as u64);
        out.push(ConvCost {
            layer: format!("layers.{k}.conv"),
            macs: conv_macs(batch, cin, cout, (4, 4), out_hw),
        });
    }
    out
}

/// The SSIM loss's Gaussian filtering of `[batch, channels, h, w]` images: the 5 stacked
/// statistics filtered by a vertical then a horizontal depthwise 1D window (valid, unpadded).
pub fn ssim_convs(params: &SsimParams, batch: u64, channels: u64, h: u64, w: u64) -> Vec<ConvCost> {
    let n = params.win_size() as u64;
    let c = 5 * channels;
    let (ho, wo) = (h.saturating_sub(n - 1), w.saturating_sub(n - 1));
    vec![
        ConvCost {
            layer: "ssim.vertical".into(),
            macs: conv_macs(batch, 1, c, (n, 1), (ho, w)),
        },
        ConvCost {
            layer: "ssim.horizontal".into(),
            macs: conv_macs(batch, 1, c, (1, n), (ho, wo)),
        },
    ]
}

/// FLOPs of one training step ([`step_flops`]), by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepFlops {
    /// G's forward.
    pub g_forward: u64,
    /// R's forward (0 without registration).
    pub r_forward: u64,
    /// One D forward on a batch (the step runs three: fake for G, real and fake for D).
    pub d_forward: u64,
    /// The SSIM filtering of the reconstruction loss (forward).
    pub ssim_forward: u64,
    /// All forward passes of the step.
    pub forward: u64,
    /// All backward passes of the step (see the module docs for which gradients run).
    pub backward: u64,
    /// `forward + backward`.
    pub total: u64,
}

/// FLOPs of one training step (`train::step::train_step`) of `model` on `[batch, 1, h, w]`
/// crops: G+R forward, reconstruction, D on the fake, their backward; then D on real and
/// fake and its backward. `registration = false` drops R (and the loss sees G's output); R
/// across slices (`through_plane`) runs G on three slices per sample (`g_forward` counts all
/// three) and R on four input channels.
pub fn step_flops(
    model: &ModelConfig,
    registration: bool,
    batch: u64,
    h: u64,
    w: u64,
) -> StepFlops {
    let g = generator_convs(&model.generator, batch, h, w);
    let g_passes = if registration && model.registration.through_plane {
        3
    } else {
        1
    };
    let g_forward = g_passes * forward_flops(&g);
    let g_first = g_passes * 2 * g.first().map_or(0, |c| c.macs);
    let r_forward = if registration {
        forward_flops(&registration_convs(&model.registration, batch, h, w))
    } else {
        0
    };
    let d = discriminator_convs(&model.discriminator, batch, h, w);
    let d_forward = forward_flops(&d);
    let d_first = 2 * d.first().map_or(0, |c| c.macs);
    let ssim_forward = forward_flops(&ssim_convs(&SsimParams::default(), batch, 1, h, w));

    let forward = g_forward + r_forward + ssim_forward + 3 * d_forward;
    let backward =
        // G: weight gradients, input gradients except the first conv's
        (2 * g_forward - g_first)
        // R: both
        + 2 * r_forward
        // SSIM: input gradients only
        + ssim_forward
        // D frozen in the G+R update: input gradients only
        + d_forward
        // D's update, real and fake: weight gradients, input gradients except the first conv's
        + 2 * (2 * d_forward - d_first);
    StepFlops {
        g_forward,
        r_forward,
        d_forward,
        ssim_forward,
        forward,
        backward,
        total: forward + backward,
    }
}

/// FLOPs of G's forward on `[batch, in_channels, h, w]` (inference).
pub fn generator_forward_flops(cfg: &GeneratorConfig, batch: u64, h: u64, w: u64) -> u64 {
    forward_flops(&generator_convs(cfg, batch, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand count: the tiny G's first conv at 64x64, batch 2: 2 * 8 * 1 * 9 * 64 * 64 MACs.
    #[test]
    fn first_conv_and_head_by_hand() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let g = generator_convs(&cfg.generator, 2, 64, 64);
        assert_eq!(g[0].layer, "down.0.0.conv");
        assert_eq!(g[0].macs, 2 * 8 * 9 * 64 * 64);
        let head = g.last().unwrap();
        assert_eq!(head.layer, "head");
        assert_eq!(head.macs, 2 * 8 * 64 * 64);
        // depth 3, 2 convs per stage: 3 down + mid + 3 x (upconv + 2 convs) + head
        assert_eq!(g.len(), 3 * 2 + 2 + 3 * 3 + 1);
    }

    /// PatchGAN output sizes: 256 -> 128 -> 64 -> 32 -> 31 -> 30.
    #[test]
    fn discriminator_spatial_sizes() {
        let cfg = DiscriminatorConfig::default();
        let d = discriminator_convs(&cfg, 1, 256, 256);
        assert_eq!(d.len(), 5);
        assert_eq!(d[0].macs, 64 * 16 * 128 * 128);
        assert_eq!(d[4].macs, 512 * 16 * 30 * 30);
    }

    #[test]
    fn flops_scale_linearly_with_batch_and_area() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let a = step_flops(&cfg, true, 1, 64, 64);
        let b = step_flops(&cfg, true, 2, 64, 64);
        assert_eq!(b.g_forward, 2 * a.g_forward);
        let c = step_flops(&cfg, true, 1, 128, 128);
        assert_eq!(c.g_forward, 4 * a.g_forward);
        assert_eq!(a.total, a.forward + a.backward);
    }
}
