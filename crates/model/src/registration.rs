//! The registration network R (RegGAN's "Reg"): a small UNet that maps (moving, fixed) to a
//! dense displacement field in pixels, used by [`crate::warp::warp`] to align G's output with
//! the real CTPA.
//!
//! The last 1x1 conv starts at N(0, `head_init_std`) weights (default 1e-5) and zero bias, so
//! R starts at (nearly) the identity transform and the generator is not chased by a random
//! field early in training. Hidden convs use He (Kaiming-uniform, fan-in) initialisation, suited
//! to the leaky-ReLU layers (RegGAN initialises its Reg net with Kaiming too).
//!
//! With `RegistrationConfig::attention`, a SAGAN self-attention block
//! ([`crate::attention::SelfAttention`], variables `attn.*`) runs on the bottleneck features
//! before the decoder; it starts as the identity.

use tch::nn;
use tch::Tensor;

use crate::attention::SelfAttention;
use crate::blocks::{check_size_multiple, Act, StageSpec, UNet, UNetSpec};
use crate::config::RegistrationConfig;

/// R's input channels: moving (G's output) and fixed (the real CTPA); across slices see
/// [`registration_channels`].
pub const REGISTRATION_IN_CHANNELS: i64 = 2;
/// R's output channels: dx (along width) and dy (along height), in pixels; across slices dz
/// is added.
pub const REGISTRATION_OUT_CHANNELS: i64 = 2;
/// Moving slices R sees with `through_plane`: G's outputs for the slice below, the slice and
/// the slice above, in that order.
pub const THROUGH_PLANE_SLICES: i64 = 3;

/// R's (input, output) channels for `cfg`.
pub fn registration_channels(cfg: &RegistrationConfig) -> (i64, i64) {
    if cfg.through_plane {
        (THROUGH_PLANE_SLICES + 1, REGISTRATION_OUT_CHANNELS + 1)
    } else {
        (REGISTRATION_IN_CHANNELS, REGISTRATION_OUT_CHANNELS)
    }
}

/// R: (moving, fixed) -> displacement field.
#[derive(Debug)]
pub struct RegistrationNet {
    unet: UNet,
    /// Self-attention at the bottleneck (`cfg.attention`).
    attention: Option<SelfAttention>,
    cfg: RegistrationConfig,
}

impl RegistrationNet {
    /// Builds R's variables under `path` (see [`crate::blocks`] for their names).
    pub fn new(path: &nn::Path, cfg: &RegistrationConfig) -> Self {
        let (in_channels, out_channels) = registration_channels(cfg);
        let spec = UNetSpec {
            in_channels,
            out_channels,
            base_channels: cfg.base_channels,
            depth: cfg.depth,
            max_channels: cfg.max_channels,
            stage: StageSpec {
                convs: cfg.convs_per_stage,
                norm: cfg.norm,
                act: Act::new(cfg.activation, cfg.leaky_slope),
                init: nn::init::DEFAULT_KAIMING_UNIFORM,
            },
            head_init: nn::Init::Randn {
                mean: 0.0,
                stdev: cfg.head_init_std,
            },
        };
        tracing::debug!(?cfg, "building registration network");
        let unet = UNet::new(path, &spec);
        let attention = cfg
            .attention
            .then(|| SelfAttention::new(&(path / "attn"), spec.width(cfg.depth)));
        Self {
            unet,
            attention,
            cfg: cfg.clone(),
        }
    }

    /// The configuration R was built from.
    pub fn config(&self) -> &RegistrationConfig {
        &self.cfg
    }

    /// Checks that a `height` x `width` input is accepted (multiples of `2^depth`).
    pub fn check_input_size(&self, height: i64, width: i64) -> anyhow::Result<()> {
        check_size_multiple(
            "registration network",
            height,
            width,
            self.cfg.size_multiple(),
        )
    }

    /// The displacement field that moves `moving` onto `fixed`.
    ///
    /// # Shapes
    /// `moving`, `fixed`: [batch, 1, height, width] (multiples of `2^depth`) ->
    /// [batch, 2, height, width] in pixels, channel 0 = dx (along width), 1 = dy (along
    /// height); `warp(moving, flow)` samples `moving` at (x + dx, y + dy).
    ///
    /// With `through_plane`: `moving` is [batch, 3, height, width] (G's outputs for the slices
    /// below, at and above), and the field gains channel 2 = dz in slices, `tanh`-bounded to
    /// [-1, 1] ([`crate::warp::warp_through_plane`]). With `max_displacement_px` = m > 0,
    /// dx and dy are `m * tanh(raw / m)`.
    pub fn forward_t(&self, moving: &Tensor, fixed: &Tensor, train: bool) -> Tensor {
        // moving first, as in RegGAN's Reg(fake_B, real_B)
        let x = Tensor::cat(&[moving, fixed], 1);
        let flow = match &self.attention {
            // bottleneck [batch, width(depth), height / 2^depth, width / 2^depth]
            Some(attn) => self
                .unet
                .forward_with_bottleneck(&x, train, |y| attn.forward(&y)),
            None => self.unet.forward_t(&x, train),
        };
        let inplane = bound(
            &flow.narrow(1, 0, REGISTRATION_OUT_CHANNELS),
            self.cfg.max_displacement_px,
        );
        if self.cfg.through_plane {
            let dz = flow.narrow(1, REGISTRATION_OUT_CHANNELS, 1).tanh();
            Tensor::cat(&[inplane, dz], 1)
        } else {
            inplane
        }
    }

    /// The bottleneck self-attention block, when configured.
    pub fn attention(&self) -> Option<&SelfAttention> {
        self.attention.as_ref()
    }
}

/// `m * tanh(raw / m)` (the raw field where it is small, never beyond `m`); `raw` itself
/// for `m = 0`.
pub fn bound(raw: &Tensor, m: f64) -> Tensor {
    if m > 0.0 {
        (raw / m).tanh() * m
    } else {
        raw.shallow_clone()
    }
}
