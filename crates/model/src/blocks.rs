//! Building blocks shared by G and R: conv + norm + activation layers, UNet stages and the
//! UNet itself.
//!
//! Variable names (the safetensors keys of a checkpoint) follow the module tree, and the
//! PyTorch twin (`tools/pytorch_twin/reggan_twin.py`) uses the same tree, so its
//! `state_dict()` keys are our VarStore names:
//!
//! ```text
//! down.{i}.{j}.conv.{weight,bias}   encoder stage i (i = 0..depth-1), layer j
//! down.{i}.{j}.norm.{weight,bias,running_mean,running_var}   (batch norm only)
//! mid.{j}.conv.*                    bottleneck stage (after the last pooling)
//! up.{i}.upconv.{weight,bias}       2x2 transposed conv from stage i+1 to stage i
//! up.{i}.convs.{j}.conv.*           decoder stage i, after concatenating the skip
//! head.{weight,bias}                1x1 conv to the output channels
//! ```

use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::config::{Activation, Norm};

/// Standard deviation of the N(0, std) weight initialisation of pix2pix/RegGAN
/// (`init_weights(net, 'normal', 0.02)`); biases start at zero.
pub const GAN_INIT_STD: f64 = 0.02;

/// Epsilon of every normalization layer (PyTorch's default).
const NORM_EPS: f64 = 1e-5;
/// Running-statistics momentum of batch norm (PyTorch's default).
const BN_MOMENTUM: f64 = 0.1;

/// An activation function with its parameter.
#[derive(Debug, Clone, Copy)]
pub struct Act {
    kind: Activation,
    leaky_slope: f64,
}

impl Act {
    pub fn new(kind: Activation, leaky_slope: f64) -> Self {
        Self { kind, leaky_slope }
    }

    /// Applies the activation elementwise (any shape).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self.kind {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu => leaky_relu(x, self.leaky_slope),
            Activation::Elu => x.elu(),
            Activation::Gelu => x.gelu("none"),
            Activation::Silu => x.silu(),
        }
    }
}

/// `torch.nn.functional.leaky_relu(x, slope)`: libtorch's kernel through `torchext` (tch's
/// `leaky_relu` has the fixed slope 0.01). The gradient is 1 where x > 0 and `slope`
/// elsewhere, as in PyTorch. Composed from `gt`/`mul`/`where` it computed the same values
/// with three kernels and three full-size tensors each way; that form remains the fallback
/// should the shim fail.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    torchext::leaky_relu(x, slope).unwrap_or_else(|e| {
        // once, not on every layer of every step
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| tracing::warn!("{e}; leaky ReLU composed from elementwise ops"));
        x.where_self(&x.gt(0.0), &(x * slope))
    })
}

/// A normalization layer (see [`Norm`]).
#[derive(Debug)]
pub enum NormLayer {
    Instance,
    Batch(nn::BatchNorm),
    None,
}

impl NormLayer {
    /// Builds the layer for `channels` channels at `path` (batch norm's variables are
    /// `weight`, `bias`, `running_mean`, `running_var`; the scale starts at N(1, 0.02) as in
    /// pix2pix).
    pub fn new(path: &nn::Path, norm: Norm, channels: i64) -> Self {
        match norm {
            Norm::Instance => NormLayer::Instance,
            Norm::None => NormLayer::None,
            Norm::Batch => NormLayer::Batch(nn::batch_norm2d(
                path,
                channels,
                nn::BatchNormConfig {
                    eps: NORM_EPS,
                    momentum: BN_MOMENTUM,
                    ws_init: nn::Init::Randn {
                        mean: 1.0,
                        stdev: GAN_INIT_STD,
                    },
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            )),
        }
    }

    /// Normalizes `x` [batch, channels, height, width]; batch norm uses (and updates) batch
    /// statistics when `train`, its running statistics otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            NormLayer::Instance => x.instance_norm(
                None::<&Tensor>,
                None,
                None,
                None,
                true,
                BN_MOMENTUM,
                NORM_EPS,
                false,
            ),
            NormLayer::Batch(bn) => bn.forward_t(x, train),
            NormLayer::None => x.shallow_clone(),
        }
    }
}

/// Whether a conv followed by `norm` needs its own bias (batch norm's shift replaces it).
pub fn conv_bias(norm: Norm) -> bool {
    norm != Norm::Batch
}

/// One 3x3 conv (padding 1) + norm + activation, at `path.conv` and `path.norm`.
#[derive(Debug)]
pub struct ConvNormAct {
    conv: nn::Conv2D,
    norm: NormLayer,
    act: Act,
}

impl ConvNormAct {
    pub fn new(
        path: &nn::Path,
        c_in: i64,
        c_out: i64,
        norm: Norm,
        act: Act,
        init: nn::Init,
    ) -> Self {
        let conv = nn::conv2d(
            path / "conv",
            c_in,
            c_out,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: conv_bias(norm),
                ws_init: init,
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        let norm = NormLayer::new(&(path / "norm"), norm, c_out);
        Self { conv, norm, act }
    }

    /// [batch, c_in, height, width] -> [batch, c_out, height, width]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.conv);
        self.act.apply(&self.norm.forward_t(&y, train))
    }
}

/// A UNet stage: `n` [`ConvNormAct`] layers at `path.0`, `path.1`, ...; the first maps
/// `c_in` to `c_out` channels, the others keep `c_out`.
#[derive(Debug)]
pub struct Stage {
    layers: Vec<ConvNormAct>,
}

/// Everything a [`Stage`] needs besides its channel counts.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    pub convs: usize,
    pub norm: Norm,
    pub act: Act,
    pub init: nn::Init,
}

impl Stage {
    pub fn new(path: &nn::Path, c_in: i64, c_out: i64, spec: StageSpec) -> Self {
        let layers = (0..spec.convs)
            .map(|j| {
                let c = if j == 0 { c_in } else { c_out };
                ConvNormAct::new(&(path / j), c, c_out, spec.norm, spec.act, spec.init)
            })
            .collect();
        Self { layers }
    }

    /// [batch, c_in, height, width] -> [batch, c_out, height, width]
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for layer in &self.layers {
            y = layer.forward_t(&y, train);
        }
        y
    }
}

/// A decoder stage: 2x2 stride-2 transposed conv from the deeper stage, concatenation with
/// the skip connection (skip first, then the upsampled features), then a [`Stage`].
#[derive(Debug)]
struct UpStage {
    upconv: nn::ConvTranspose2D,
    convs: Stage,
}

/// The shape of a [`UNet`].
#[derive(Debug, Clone, Copy)]
pub struct UNetSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub base_channels: i64,
    pub depth: usize,
    pub max_channels: i64,
    pub stage: StageSpec,
    /// Initialisation of the 1x1 head's weights (its bias starts at zero).
    pub head_init: nn::Init,
}

impl UNetSpec {
    /// Channels of stage `i` (0 = full resolution, `depth` = bottleneck).
    pub fn width(&self, i: usize) -> i64 {
        let doubled = self.base_channels.saturating_mul(1i64 << i.min(62));
        doubled.min(self.max_channels)
    }
}

/// A UNet (Ronneberger et al. 2015) with configurable width, depth and stage depth:
/// `depth` max-pool downsamplings, transposed-conv upsamplings, concatenated skips, and a 1x1
/// head with no output activation (the caller adds tanh for G).
#[derive(Debug)]
pub struct UNet {
    down: Vec<Stage>,
    mid: Stage,
    up: Vec<UpStage>,
    head: nn::Conv2D,
}

impl UNet {
    pub fn new(path: &nn::Path, spec: &UNetSpec) -> Self {
        let down = (0..spec.depth)
            .map(|i| {
                let c_in = if i == 0 {
                    spec.in_channels
                } else {
                    spec.width(i - 1)
                };
                Stage::new(&(path / "down" / i), c_in, spec.width(i), spec.stage)
            })
            .collect();
        let mid_in = if spec.depth == 0 {
            spec.in_channels
        } else {
            spec.width(spec.depth - 1)
        };
        let mid = Stage::new(&(path / "mid"), mid_in, spec.width(spec.depth), spec.stage);
        let up = (0..spec.depth)
            .map(|i| {
                let p = path / "up" / i;
                let upconv = nn::conv_transpose2d(
                    &p / "upconv",
                    spec.width(i + 1),
                    spec.width(i),
                    2,
                    nn::ConvTransposeConfig {
                        stride: 2,
                        ws_init: spec.stage.init,
                        bs_init: nn::Init::Const(0.0),
                        ..Default::default()
                    },
                );
                let convs = Stage::new(
                    &(&p / "convs"),
                    2 * spec.width(i),
                    spec.width(i),
                    spec.stage,
                );
                UpStage { upconv, convs }
            })
            .collect();
        let head = nn::conv2d(
            path / "head",
            spec.width(0),
            spec.out_channels,
            1,
            nn::ConvConfig {
                ws_init: spec.head_init,
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        Self {
            down,
            mid,
            up,
            head,
        }
    }

    /// [batch, in_channels, height, width] -> [batch, out_channels, height, width]; height
    /// and width must be divisible by `2^depth` (the callers check it).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_with_bottleneck(x, train, |y| y)
    }

    /// [`UNet::forward_t`] with `bottleneck` applied to the bottleneck stage's output
    /// [batch, width(depth), height / 2^depth, width / 2^depth] (same shape in and out) before
    /// the decoder: R's optional self-attention block (`crate::attention`) goes there.
    pub fn forward_with_bottleneck(
        &self,
        x: &Tensor,
        train: bool,
        bottleneck: impl FnOnce(Tensor) -> Tensor,
    ) -> Tensor {
        // 1. down: keep each stage's output for the skip connections
        let mut skips = Vec::with_capacity(self.down.len());
        let mut y = x.shallow_clone();
        for (i, stage) in self.down.iter().enumerate() {
            if i > 0 {
                y = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            y = stage.forward_t(&y, train);
            skips.push(y.shallow_clone());
        }
        // 2. mid (bottleneck) [batch, width(depth), height / 2^depth, width / 2^depth]
        if !self.down.is_empty() {
            y = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        y = bottleneck(self.mid.forward_t(&y, train));
        // 3. up: deepest decoder stage first
        for (up, skip) in self.up.iter().zip(skips.iter()).rev() {
            let upsampled = y.apply(&up.upconv);
            // [batch, 2 * width(i), h_i, w_i]
            let cat = Tensor::cat(&[skip, &upsampled], 1);
            y = up.convs.forward_t(&cat, train);
        }
        // 4. head [batch, out_channels, height, width]
        y.apply(&self.head)
    }
}

/// Checks that an input of `height` x `width` fits a network whose size multiple is
/// `multiple` (named `network` in the error).
pub fn check_size_multiple(
    network: &str,
    height: i64,
    width: i64,
    multiple: i64,
) -> anyhow::Result<()> {
    if height <= 0 || width <= 0 || height % multiple != 0 || width % multiple != 0 {
        anyhow::bail!(
            "{network}: input size {height}x{width} is not a positive multiple of {multiple} \
             (2^depth) in both height and width; pad or crop it (e.g. to {}x{})",
            round_up(height.max(1), multiple),
            round_up(width.max(1), multiple)
        );
    }
    Ok(())
}

fn round_up(x: i64, multiple: i64) -> i64 {
    (x + multiple - 1) / multiple * multiple
}
