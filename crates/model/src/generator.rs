//! The generator G: a UNet from NCCT to synthetic CTPA with a tanh output in [-1, 1].
//!
//! The architecture is [`crate::blocks::UNet`]; the default preset (base 64, depth 4, four
//! 3x3 convs per stage, instance norm, ReLU) has 62,444,609 parameters (arithmetic in
//! [`crate::config`]). Weights start at N(0, 0.02) with zero biases, as in pix2pix/RegGAN.
//!
//! With [`GeneratorConfig::residual`], G learns a correction of its input instead:
//! `out = tanh(atanh(x_centre) + unet(x))` with a zero-initialised head. The sum is taken in
//! tanh's pre-activation space so the output stays in (-1, 1) with a gradient everywhere
//! (a clamp would block the gradient of any pixel pushed past the window), and an untrained G
//! reproduces its input to within [`RESIDUAL_EPS`] (0.13 HU at the window edges for a
//! 2524 HU window), i.e. it starts at the NCCT-as-prediction baseline.

use tch::nn;
use tch::Tensor;

/// The residual generator's input is clamped to `[-1 + eps, 1 - eps]` before `atanh`, so
/// that air (-1) maps to a finite pre-activation (atanh(1 - 1e-4) = 4.95).
pub const RESIDUAL_EPS: f64 = 1e-4;

use crate::blocks::{check_size_multiple, Act, StageSpec, UNet, UNetSpec, GAN_INIT_STD};
use crate::config::{GeneratorConfig, WeightInit};

/// He normal, fan in, with `gain` (see [`WeightInit::Kaiming`]).
fn kaiming(gain: f64) -> nn::Init {
    nn::Init::Kaiming {
        dist: nn::init::NormalOrUniform::Normal,
        fan: nn::init::FanInOut::FanIn,
        non_linearity: nn::init::NonLinearity::ExplicitGain(gain),
    }
}

/// G: NCCT slice(s) -> synthetic CTPA slice.
#[derive(Debug)]
pub struct Generator {
    unet: UNet,
    cfg: GeneratorConfig,
}

impl Generator {
    /// Builds G's variables under `path` (see [`crate::blocks`] for their names).
    pub fn new(path: &nn::Path, cfg: &GeneratorConfig) -> Self {
        let (init, plain_head) = match cfg.init {
            WeightInit::Gan => {
                let gan = nn::Init::Randn {
                    mean: 0.0,
                    stdev: GAN_INIT_STD,
                };
                (gan, gan)
            }
            WeightInit::Kaiming => (kaiming(cfg.activation_gain()), kaiming(1.0)),
        };
        let spec = UNetSpec {
            in_channels: cfg.in_channels,
            out_channels: cfg.out_channels,
            base_channels: cfg.base_channels,
            depth: cfg.depth,
            max_channels: cfg.max_channels,
            stage: StageSpec {
                convs: cfg.convs_per_stage,
                norm: cfg.norm,
                act: Act::new(cfg.activation, cfg.leaky_slope),
                init,
            },
            // A residual G starts as the identity: its correction is zero until trained.
            head_init: if cfg.residual {
                nn::Init::Const(0.0)
            } else {
                plain_head
            },
        };
        tracing::debug!(?cfg, "building generator");
        Self {
            unet: UNet::new(path, &spec),
            cfg: cfg.clone(),
        }
    }

    /// The configuration G was built from.
    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    /// Checks that a `height` x `width` input is accepted: both must be multiples of
    /// `2^depth` ([`GeneratorConfig::size_multiple`]).
    pub fn check_input_size(&self, height: i64, width: i64) -> anyhow::Result<()> {
        check_size_multiple("generator", height, width, self.cfg.size_multiple())
    }
}

impl nn::ModuleT for Generator {
    /// # Shapes
    /// `x`: [batch, in_channels, height, width] in [-1, 1], height and width multiples of
    /// `2^depth` (checked by [`Generator::check_input_size`]; other sizes panic inside
    /// libtorch at the skip concatenation) -> [batch, out_channels, height, width] in [-1, 1].
    ///
    /// With `residual`, the correction is added to the centre input channel (channel
    /// `in_channels / 2`: the slice itself in a 2.5D stack), broadcast over `out_channels`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        // [batch, out_channels, height, width]
        let u = self.unet.forward_t(x, train);
        if !self.cfg.residual {
            return u.tanh();
        }
        let centre = x
            .narrow(1, self.cfg.in_channels / 2, 1)
            .clamp(-1.0 + RESIDUAL_EPS, 1.0 - RESIDUAL_EPS)
            .arctanh();
        (centre + u).tanh()
    }
}
