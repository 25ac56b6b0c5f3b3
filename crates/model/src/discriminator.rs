//! The discriminator D: pix2pix's PatchGAN (`NLayerDiscriminator`) with spectral norm on
//! every conv (switchable: `DiscriminatorConfig::spectral_norm`).
//!
//! Layers (all 4x4 convs, padding 1), for `n_layers = 3` and base width 64:
//!
//! ```text
//! layers.0  in -> 64,  stride 2, LeakyReLU(0.2)            (no norm on the first layer)
//! layers.1  64 -> 128, stride 2, norm, LeakyReLU(0.2)
//! layers.2  128 -> 256, stride 2, norm, LeakyReLU(0.2)
//! layers.3  256 -> 512, stride 1, norm, LeakyReLU(0.2)
//! layers.4  512 -> 1,   stride 1                           (patch logits)
//! ```
//!
//! which gives the 70x70 receptive field. Each conv has `layers.{k}.conv.{weight_orig, bias,
//! weight_u, weight_v}` (see [`crate::spectral_norm`]), or `layers.{k}.conv.{weight, bias}`
//! without spectral norm, and, with batch norm, `layers.{k}.norm.*`. Weights start at
//! N(0, 0.02), biases at zero.
//!
//! Without spectral norm D's Lipschitz constant is unconstrained; the R1 penalty
//! (`crate::r1`, applied by the trainer) is the usual replacement, and both can be combined.

use tch::nn;
use tch::Tensor;

use crate::blocks::{conv_bias, leaky_relu, NormLayer, GAN_INIT_STD};
use crate::config::{DiscriminatorConfig, Norm};
use crate::spectral_norm::SpectralNorm;

/// Kernel size of every PatchGAN conv.
const KERNEL: i64 = 4;
/// Padding of every PatchGAN conv.
const PADDING: i64 = 1;

/// A conv's weight: spectrally normalized, or used as it is.
#[derive(Debug)]
enum ConvWeight {
    Spectral(SpectralNorm),
    Plain(Tensor),
}

impl ConvWeight {
    /// The weight the conv uses (for spectral norm: after one power iteration when `train`).
    fn weight(&self, train: bool) -> Tensor {
        match self {
            ConvWeight::Spectral(sn) => sn.weight(train),
            ConvWeight::Plain(w) => w.shallow_clone(),
        }
    }
}

/// One 4x4 conv (spectrally normalized or plain), optionally followed by a norm and LeakyReLU.
#[derive(Debug)]
struct SnConvLayer {
    weight: ConvWeight,
    bias: Option<Tensor>,
    stride: i64,
    norm: NormLayer,
    /// LeakyReLU slope, `None` for the last (logit) layer.
    leaky_slope: Option<f64>,
}

impl SnConvLayer {
    /// [batch, c_in, h, w] -> [batch, c_out, h', w'] with h' = (h + 2 - 4) / stride + 1
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let w = self.weight.weight(train);
        let y = x.conv2d(&w, self.bias.as_ref(), [self.stride], [PADDING], [1], 1);
        let y = self.norm.forward_t(&y, train);
        match self.leaky_slope {
            Some(slope) => leaky_relu(&y, slope),
            None => y,
        }
    }
}

/// D: PatchGAN, with spectral norm unless the config turns it off.
#[derive(Debug)]
pub struct Discriminator {
    layers: Vec<SnConvLayer>,
    cfg: DiscriminatorConfig,
}

impl Discriminator {
    /// Builds D's variables under `path`.
    pub fn new(path: &nn::Path, cfg: &DiscriminatorConfig) -> Self {
        let width = |n: usize| {
            let doubled = cfg.base_channels.saturating_mul(1i64 << n.min(62));
            doubled.min(cfg.max_channels)
        };
        let n = cfg.n_layers;
        // (c_in, c_out, stride, norm, activation) for each layer, pix2pix's order
        let mut plan = Vec::with_capacity(n + 2);
        plan.push((cfg.input_channels(), width(0), 2, Norm::None, true));
        for k in 1..n {
            plan.push((width(k - 1), width(k), 2, cfg.norm, true));
        }
        plan.push((width(n.saturating_sub(1)), width(n), 1, cfg.norm, true));
        plan.push((width(n), 1, 1, Norm::None, false));
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: GAN_INIT_STD,
        };
        let layers = plan
            .into_iter()
            .enumerate()
            .map(|(k, (c_in, c_out, stride, norm, act))| {
                let p = path / "layers" / k;
                let conv = &p / "conv";
                let dims = [c_out, c_in, KERNEL, KERNEL];
                let weight = if cfg.spectral_norm {
                    ConvWeight::Spectral(SpectralNorm::new(
                        &conv,
                        &dims,
                        init,
                        cfg.spectral_norm_eps,
                    ))
                } else {
                    ConvWeight::Plain(conv.var("weight", &dims, init))
                };
                let bias =
                    conv_bias(norm).then(|| conv.var("bias", &[c_out], nn::Init::Const(0.0)));
                SnConvLayer {
                    weight,
                    bias,
                    stride,
                    norm: NormLayer::new(&(&p / "norm"), norm, c_out),
                    leaky_slope: act.then_some(cfg.leaky_slope),
                }
            })
            .collect();
        tracing::debug!(?cfg, "building discriminator");
        Self {
            layers,
            cfg: cfg.clone(),
        }
    }

    /// The configuration D was built from.
    pub fn config(&self) -> &DiscriminatorConfig {
        &self.cfg
    }

    /// D's input for an image: the image itself (unconditional) or `condition` (the NCCT,
    /// G's input) concatenated before it along channels (conditional).
    ///
    /// # Shapes
    /// `image`: [batch, image_channels, h, w]; `condition`: [batch, condition_channels, h, w]
    /// -> [batch, input_channels, h, w]
    pub fn input(&self, image: &Tensor, condition: &Tensor) -> Tensor {
        if self.cfg.conditional {
            Tensor::cat(&[condition, image], 1)
        } else {
            image.shallow_clone()
        }
    }

    /// The spectral-norm states of the convs, first layer first (for tests and diagnostics);
    /// empty without spectral norm.
    pub fn spectral_norms(&self) -> impl Iterator<Item = &SpectralNorm> {
        self.layers.iter().filter_map(|l| match &l.weight {
            ConvWeight::Spectral(sn) => Some(sn),
            ConvWeight::Plain(_) => None,
        })
    }
}

impl nn::ModuleT for Discriminator {
    /// Patch logits. With `train = true` every conv's spectral norm runs one power iteration
    /// (updating its u and v); with `train = false` nothing is updated.
    ///
    /// # Shapes
    /// `x`: [batch, input_channels, h, w] -> [batch, 1, h', w'] with, for `n_layers = 3`,
    /// h' = h / 8 - 2 (e.g. 256 -> 30, 64 -> 6, 32 -> 2).
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for layer in &self.layers {
            y = layer.forward_t(&y, train);
        }
        y
    }
}
