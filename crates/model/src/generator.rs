//! The generator G: a UNet from NCCT to synthetic CTPA with a tanh output in [-1, 1].
//!
//! The architecture is [`crate::blocks::UNet`]; the default preset (base 64, depth 4, four
//! 3x3 convs per stage, instance norm, ReLU) has 62,444,609 parameters (arithmetic in
//! [`crate::config`]). Weights start at N(0, 0.02) with zero biases, as in pix2pix/RegGAN.

use tch::nn;
use tch::Tensor;

use crate::blocks::{check_size_multiple, Act, StageSpec, UNet, UNetSpec, GAN_INIT_STD};
use crate::config::GeneratorConfig;

/// G: NCCT slice(s) -> synthetic CTPA slice.
#[derive(Debug)]
pub struct Generator {
    unet: UNet,
    cfg: GeneratorConfig,
}

impl Generator {
    /// Builds G's variables under `path` (see [`crate::blocks`] for their names).
    pub fn new(path: &nn::Path, cfg: &GeneratorConfig) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: GAN_INIT_STD,
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
            head_init: init,
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
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.unet.forward_t(x, train).tanh()
    }
}
