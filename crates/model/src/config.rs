//! Model configuration: the shapes of G, R and D, and the named presets.
//!
//! Configs hold no logic beyond small derived quantities (the size multiple, the
//! discriminator's input channels); the networks are built from them by
//! [`crate::generator::Generator::new`], [`crate::registration::RegistrationNet::new`] and
//! [`crate::discriminator::Discriminator::new`]. Every config is serde with
//! `#[serde(default, deny_unknown_fields)]`, so a `config.toml` may name only what it changes
//! and a typo is an error rather than a silently ignored key.
//!
//! # Presets
//!
//! | preset    | G (UNet)                          | R (registration UNet)  | D (PatchGAN)   |
//! |-----------|-----------------------------------|------------------------|----------------|
//! | `default` | base 64, depth 4, 4 convs/stage: 62,444,609 params | base 12, depth 3, max 24: 71,150 | base 64, 3 layers: 2,762,689 |
//! | `reggan`  | as default                        | base 32, depth 4, max 128: 2,073,186 (RegGAN's R is 2.06M) | as default |
//! | `tiny`    | base 8, depth 3, 2 convs/stage    | base 8, depth 2, max 16 | base 8, 3 layers |
//!
//! The default generator's count (the product owner asked for 61M +- 2M): widths
//! w_i = 64 * 2^i for i = 0..=4 (64 .. 1024); every stage has 4 conv 3x3 layers (with bias,
//! instance norm has no parameters), the decoder stage i has a 2x2 transposed conv
//! w_{i+1} -> w_i, and a 1x1 head w_0 -> 1. With c(i, o, k) = i*o*k*k + o:
//! encoder+bottleneck = sum_i [c(w_{i-1}, w_i, 3) + 3 c(w_i, w_i, 3)] = 35,242,688 (w_{-1} = 1),
//! decoder = sum_i [c(w_{i+1}, w_i, 2) + c(2 w_i, w_i, 3) + 3 c(w_i, w_i, 3)] = 27,201,856,
//! head = 65: total 62,444,609 (tested in `tests/networks.rs` and by the PyTorch twin).

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Normalization layer after each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// `InstanceNorm2d(affine = false, track_running_stats = false)` as in pix2pix/RegGAN:
    /// no parameters, per-image statistics in training and evaluation alike.
    Instance,
    /// `BatchNorm2d` with learned scale/shift and running statistics (momentum 0.1, eps 1e-5);
    /// the convolution before it has no bias (it would be cancelled by the mean).
    Batch,
    /// No normalization (the convolution keeps its bias).
    None,
}

/// Activation after each normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// Leaky ReLU with the config's `leaky_slope`.
    LeakyRelu,
    Elu,
    /// GELU (exact, erf form).
    Gelu,
    Silu,
}

/// The generator G: a UNet from the NCCT slice(s) to the synthetic CTPA slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Input channels: 1 for a single NCCT slice, 2k+1 for a 2.5D stack of neighbours.
    pub in_channels: i64,
    /// Output channels (1: the CTPA slice).
    pub out_channels: i64,
    /// Channels of the first stage; stage i has `min(base * 2^i, max_channels)`.
    pub base_channels: i64,
    /// Number of 2x downsamplings; inputs must be divisible by `2^depth`.
    pub depth: usize,
    /// Cap on the channel count of any stage.
    pub max_channels: i64,
    /// 3x3 conv + norm + activation layers per stage (encoder, bottleneck and decoder).
    pub convs_per_stage: usize,
    pub norm: Norm,
    pub activation: Activation,
    /// Negative slope when `activation = "leaky_relu"`.
    pub leaky_slope: f64,
    /// Residual output: G predicts a correction of its input (the centre NCCT slice) instead of
    /// the whole image, `out = tanh(atanh(x_centre) + unet(x))`, with the UNet's 1x1 head
    /// initialised to zero so an untrained G is the identity (the NCCT-as-prediction baseline)
    /// and training only has to learn what contrast changes: the pulmonary arteries, the right
    /// heart. `false` is the product owner's plain `tanh(unet(x))`. Same parameter count.
    /// Default: false.
    pub residual: bool,
    /// How the conv weights start ([`WeightInit`]): `"gan"` (N(0, 0.02), pix2pix/RegGAN's,
    /// default) or `"kaiming"` (He et al. 2015). With `norm = "none"` only `"kaiming"` keeps
    /// the signal alive through the UNet.
    pub init: WeightInit,
}

/// How G's convolution weights are initialised (biases start at zero either way; a residual
/// G's head at zero either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// N(0, 0.02), as pix2pix and RegGAN (`init_weights(net, 'normal', 0.02)`): made for
    /// layers a normalization follows. Without one, a 3x3 conv of 8 channels scales the signal
    /// by about 0.12, so after a few layers G's output and gradients vanish.
    Gan,
    /// He normal, fan in: std = gain / sqrt(fan_in) with the activation's gain (sqrt(2) for
    /// ReLU-like activations, sqrt(2 / (1 + slope^2)) for leaky ReLU), so every layer keeps
    /// the signal's scale with or without a normalization; a plain (non-residual) G's head
    /// uses gain 1. As PyTorch's `nn.init.kaiming_normal_(w, nonlinearity=...)`.
    Kaiming,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            base_channels: 64,
            depth: 4,
            max_channels: 1024,
            convs_per_stage: 4,
            norm: Norm::Instance,
            activation: Activation::Relu,
            leaky_slope: 0.2,
            residual: false,
            init: WeightInit::Gan,
        }
    }
}

impl GeneratorConfig {
    /// The gain He initialisation uses for the activation (PyTorch's `calculate_gain`):
    /// sqrt(2 / (1 + slope^2)) for leaky ReLU, sqrt(2) for ReLU and its smooth relatives
    /// (ELU, GELU, SiLU, which `calculate_gain` does not list).
    pub fn activation_gain(&self) -> f64 {
        match self.activation {
            Activation::LeakyRelu => (2.0 / (1.0 + self.leaky_slope * self.leaky_slope)).sqrt(),
            Activation::Relu | Activation::Elu | Activation::Gelu | Activation::Silu => 2f64.sqrt(),
        }
    }

    /// Input height and width must be multiples of this (`2^depth`).
    pub fn size_multiple(&self) -> i64 {
        1i64.checked_shl(self.depth as u32)
            .filter(|m| *m > 0)
            .unwrap_or(i64::MAX)
    }
}

/// The registration network R: a small UNet from (moving, fixed) to a displacement field.
///
/// Input is 2 channels (G's output and the real CTPA) and output 2 channels (dx, dy in
/// pixels); with `through_plane`, 4 in (G's outputs for the slice and its two neighbours, and
/// the CTPA) and 3 out (dx, dy, and dz in slices, bounded to [-1, 1]). `attention` adds a
/// SAGAN self-attention block at the bottleneck (see [`crate::attention`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    pub base_channels: i64,
    /// Number of 2x downsamplings; inputs must be divisible by `2^depth`.
    pub depth: usize,
    pub max_channels: i64,
    pub convs_per_stage: usize,
    pub norm: Norm,
    pub activation: Activation,
    pub leaky_slope: f64,
    /// Standard deviation of the last (1x1) conv's weights; its bias starts at zero, so R
    /// starts at (nearly) the identity transform.
    pub head_init_std: f64,
    /// A self-attention block (Zhang et al. 2019, SAGAN) between the bottleneck and the
    /// decoder; its residual scale starts at 0, so R starts as without it. Memory grows with
    /// the square of the bottleneck's positions (see [`crate::attention`]). Default: false.
    pub attention: bool,
    /// How the spatial transformer samples G's output at the displaced positions
    /// ([`crate::warp::WarpMethod`]): `"grid_sample"` (libtorch's fused sampler, default) or
    /// `"exact"` (pixel-coordinate gathers, exact identity for a zero field, slower).
    pub warp: crate::warp::WarpMethod,
    /// Registration across slices (#16): G also translates the NCCT slices above and below,
    /// R sees the three outputs with the CTPA and adds a through-plane displacement `dz`
    /// (slices, `tanh`-bounded to [-1, 1]), and the spatial transformer interpolates the
    /// in-plane-warped outputs linearly along z
    /// ([`crate::warp::warp_through_plane`]). Breathing moves anatomy across thick slices,
    /// which an in-plane field cannot undo. Costs G three forward passes per step (one pass
    /// over three times the batch: with `norm = "batch"` the neighbours share G's batch
    /// statistics). The smoothness term becomes the in-plane field's (pixels, mean over dx and
    /// dy) plus dz's (slices). Ignored with `registration = false`. Default: false.
    pub through_plane: bool,
    /// The largest in-plane displacement R can predict, pixels: the field is
    /// `m * tanh(raw / m)`, the raw output where it is small (so training starts as without
    /// the bound) and never beyond `m`. A field with no bound can run away: a uniform shift
    /// costs no smoothness, and once it samples beyond the image (border padding) no
    /// gradient brings it back (on the #16 benchmark R at the default size with smoothness
    /// 30 reached 1,500 px at step 300 and the run's body MAE 634 HU). Set it to a few
    /// times the largest motion expected after the rigid pre-alignment. 0 = no bound.
    /// Default: 0.
    pub max_displacement_px: f64,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            base_channels: 12,
            depth: 3,
            max_channels: 24,
            convs_per_stage: 2,
            norm: Norm::None,
            activation: Activation::LeakyRelu,
            leaky_slope: 0.2,
            head_init_std: 1e-5,
            attention: false,
            warp: crate::warp::WarpMethod::GridSample,
            through_plane: false,
            max_displacement_px: 0.0,
        }
    }
}

impl RegistrationConfig {
    /// Input height and width must be multiples of this (`2^depth`).
    pub fn size_multiple(&self) -> i64 {
        1i64.checked_shl(self.depth as u32)
            .filter(|m| *m > 0)
            .unwrap_or(i64::MAX)
    }
}

/// The largest channel count any network may ask for.
pub const MAX_CHANNELS: i64 = 8192;
/// The deepest UNet (2^depth must divide the image) and PatchGAN.
pub const MAX_DEPTH: usize = 10;

/// The discriminator D: pix2pix's `NLayerDiscriminator` (PatchGAN) with spectral norm on
/// every conv (unless `spectral_norm = false`). With 3 layers its receptive field is 70x70.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Channels of the judged image (G's output or the real CTPA).
    pub image_channels: i64,
    /// Conditional D: the input is the NCCT (`condition_channels`) concatenated with the
    /// image. RegGAN's D is unconditional (the default).
    pub conditional: bool,
    /// Channels of the condition (the generator's input) when `conditional`.
    pub condition_channels: i64,
    /// Channels of the first conv; layer n has `min(base * 2^n, max_channels)`.
    pub base_channels: i64,
    /// Number of stride-2 convs (3 gives the 70x70 PatchGAN).
    pub n_layers: usize,
    pub max_channels: i64,
    /// Normalization of the middle layers (never on the first nor the last).
    pub norm: Norm,
    /// LeakyReLU slope.
    pub leaky_slope: f64,
    /// Spectral norm on every conv (Miyato et al. 2018). `false` gives plain convs (weights
    /// `layers.{k}.conv.weight`), e.g. to let the R1 penalty replace it. Default: true.
    pub spectral_norm: bool,
    /// Power-iteration epsilon of the spectral norm (PyTorch's 1e-12).
    pub spectral_norm_eps: f64,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self {
            image_channels: 1,
            conditional: false,
            condition_channels: 1,
            base_channels: 64,
            n_layers: 3,
            max_channels: 512,
            norm: Norm::Instance,
            leaky_slope: 0.2,
            spectral_norm: true,
            spectral_norm_eps: 1e-12,
        }
    }
}

impl DiscriminatorConfig {
    /// Channels D's first conv sees.
    pub fn input_channels(&self) -> i64 {
        if self.conditional {
            self.image_channels + self.condition_channels
        } else {
            self.image_channels
        }
    }
}

/// The three networks of RegGAN.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub generator: GeneratorConfig,
    pub registration: RegistrationConfig,
    pub discriminator: DiscriminatorConfig,
}

const PRESETS: &[&str] = &["default", "tiny", "reggan"];

impl ModelConfig {
    /// The names [`ModelConfig::preset`] accepts.
    pub fn preset_names() -> &'static [&'static str] {
        PRESETS
    }

    /// A named preset (see the module docs for their sizes).
    pub fn preset(name: &str) -> anyhow::Result<ModelConfig> {
        match name {
            "default" => Ok(ModelConfig::default()),
            "reggan" => Ok(ModelConfig {
                registration: RegistrationConfig {
                    base_channels: 32,
                    depth: 4,
                    max_channels: 128,
                    ..RegistrationConfig::default()
                },
                ..ModelConfig::default()
            }),
            "tiny" => Ok(ModelConfig {
                generator: GeneratorConfig {
                    base_channels: 8,
                    depth: 3,
                    max_channels: 64,
                    convs_per_stage: 2,
                    ..GeneratorConfig::default()
                },
                registration: RegistrationConfig {
                    base_channels: 8,
                    depth: 2,
                    max_channels: 16,
                    ..RegistrationConfig::default()
                },
                discriminator: DiscriminatorConfig {
                    base_channels: 8,
                    max_channels: 64,
                    ..DiscriminatorConfig::default()
                },
            }),
            other => anyhow::bail!(
                "unknown model preset {other:?}: expected one of {}",
                PRESETS.join(", ")
            ),
        }
    }

    /// Checks every size before a network is built (libtorch would abort or panic deep inside
    /// on a zero width or a depth the image cannot take); errors name the key and the limit.
    /// `crop` is the side of the training images.
    pub fn validate(&self, crop: i64) -> anyhow::Result<()> {
        let g = &self.generator;
        let r = &self.registration;
        let d = &self.discriminator;
        let positive = [
            ("model.generator.in_channels", g.in_channels),
            ("model.generator.out_channels", g.out_channels),
            ("model.generator.base_channels", g.base_channels),
            ("model.generator.max_channels", g.max_channels),
            ("model.registration.base_channels", r.base_channels),
            ("model.registration.max_channels", r.max_channels),
            ("model.discriminator.image_channels", d.image_channels),
            ("model.discriminator.base_channels", d.base_channels),
            ("model.discriminator.max_channels", d.max_channels),
        ];
        for (key, v) in positive {
            if !(1..=MAX_CHANNELS).contains(&v) {
                bail!("{key} = {v} must lie in 1..={MAX_CHANNELS}");
            }
        }
        for (key, v) in [
            ("model.generator.depth", g.depth),
            ("model.registration.depth", r.depth),
        ] {
            if !(1..=MAX_DEPTH).contains(&v) {
                bail!("{key} = {v} must lie in 1..={MAX_DEPTH}");
            }
        }
        for (key, v) in [
            ("model.generator.convs_per_stage", g.convs_per_stage),
            ("model.registration.convs_per_stage", r.convs_per_stage),
        ] {
            if !(1..=16).contains(&v) {
                bail!("{key} = {v} must lie in 1..=16");
            }
        }
        let m = r.max_displacement_px;
        if !(m.is_finite() && m >= 0.0) {
            bail!("model.registration.max_displacement_px = {m} must be finite and >= 0 (0 = no bound)");
        }
        // D: n_layers stride-2 convs halve the side, then two 4x4 stride-1 convs take 1 each
        if d.n_layers == 0 || d.n_layers > MAX_DEPTH {
            bail!(
                "model.discriminator.n_layers = {} must lie in 1..={MAX_DEPTH}",
                d.n_layers
            );
        }
        let smallest = 3i64 << d.n_layers;
        if crop < smallest {
            bail!(
                "model.discriminator.n_layers = {} needs images of at least {smallest} px \
                 (3 x 2^n_layers); data.crop_size is {crop}",
                d.n_layers
            );
        }
        Ok(())
    }

    /// Input height and width must be multiples of this for both G and R.
    pub fn size_multiple(&self) -> i64 {
        self.generator
            .size_multiple()
            .max(self.registration.size_multiple())
    }
}
