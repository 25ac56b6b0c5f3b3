//! Perceptual (VGG feature) loss: the distance between VGG16/VGG19 feature maps of the
//! (registered) generator output and of the real CTPA, computed by frozen ImageNet-trained
//! convolutions that the user supplies as a safetensors file.
//!
//! # Why a file, and which one
//! Nothing is downloaded at run time (hospital machines are often offline, and a run must be
//! reproducible from its folder), so the weights come from a file named in the config
//! (`[loss.perceptual] weights_file`). Its keys are torchvision's: `features.N.weight` and
//! `features.N.bias` for each convolution at index `N` of `torchvision.models.vgg16().features`
//! (or `vgg19`), so torchvision's ImageNet weights export in a few lines of Python (wherever
//! torchvision and its weights are available):
//!
//! ```python
//! import torchvision
//! from safetensors.torch import save_file
//! vgg = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
//! save_file({f"features.{k}": v.contiguous() for k, v in vgg.features.state_dict().items()},
//!           "vgg16_features.safetensors")
//! ```
//!
//! (`vgg19` / `VGG19_Weights.IMAGENET1K_V1` for VGG19.) Two other spellings load as well: a
//! whole-model `vgg.state_dict()` (the `classifier.*` keys are ignored) and a bare
//! `vgg.features.state_dict()` (keys `N.weight`, without the prefix). Batch-norm variants
//! (`vgg16_bn`) are rejected: their indices differ.
//!
//! # Structure checks
//! Loading checks the layer structure of the chosen variant, not the channel widths: every
//! convolution index of torchvision's layout must hold a `[out, in, 3, 3]` weight and an `[out]`
//! bias, the first convolution takes 3 channels and each one takes the previous one's output
//! channels, and no other index may hold a tensor. Each convolution is built from the file's
//! shapes, so a narrow "VGG-shaped" file (the tests' random ones, a few kB) loads like the real
//! 58 MB one. Every failure names the file and the key.
//!
//! # The loss
//! The single channel in [-1, 1] is mapped to [0, 1], replicated to three channels and
//! normalised with ImageNet's mean and standard deviation (what torchvision's weights expect).
//! For each configured layer `l` with weight `w_l`, `d_l` is the mean L1 (or mean squared)
//! difference of the two feature maps over all their elements; the loss is the weighted mean
//! `sum(w_l d_l) / sum(w_l)`, so the layer weights set proportions and the term's scale is set
//! by `relative_weight` alone. The VGG is frozen: its tensors are plain tensors without
//! gradient, outside any `VarStore` (never optimised, never in a checkpoint); gradients flow
//! through it to the prediction only. VGG `features` has no dropout or batch norm, so it is
//! always in eval mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use thiserror::Error;
use tracing::{debug, warn};

use crate::losses::LossError;

/// ImageNet channel means (RGB) of torchvision's VGG weights.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB) of torchvision's VGG weights.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Which VGG's layout the weights file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VggVariant {
    /// VGG16 (configuration "D"): 13 convolutions in blocks of 2, 2, 3, 3, 3.
    #[default]
    Vgg16,
    /// VGG19 (configuration "E"): 16 convolutions in blocks of 2, 2, 4, 4, 4.
    Vgg19,
}

impl VggVariant {
    /// Convolutions per block.
    fn block_convs(self) -> [usize; 5] {
        match self {
            VggVariant::Vgg16 => [2, 2, 3, 3, 3],
            VggVariant::Vgg19 => [2, 2, 4, 4, 4],
        }
    }

    /// torchvision's channel widths per block (informational: files may be narrower).
    pub const TORCHVISION_WIDTHS: [i64; 5] = [64, 128, 256, 512, 512];

    /// The modules of torchvision's `features`, in index order.
    pub fn layout(self) -> Vec<VggOp> {
        let mut ops = Vec::new();
        for (b, &n) in self.block_convs().iter().enumerate() {
            for k in 1..=n {
                ops.push(VggOp::Conv { block: b + 1, k });
                ops.push(VggOp::Relu { block: b + 1, k });
            }
            ops.push(VggOp::Pool { block: b + 1 });
        }
        ops
    }

    /// Index in `features` of a layer named like `relu3_3`, `conv1_2` or `pool4`.
    pub fn layer_index(self, name: &str) -> Option<usize> {
        self.layout().iter().position(|op| op.name() == name)
    }

    /// Lower-case name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            VggVariant::Vgg16 => "vgg16",
            VggVariant::Vgg19 => "vgg19",
        }
    }
}

/// One module of VGG's `features` (the layout only, without weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggOp {
    /// 3x3 convolution, padding 1: `conv{block}_{k}`.
    Conv { block: usize, k: usize },
    /// ReLU after `conv{block}_{k}`: `relu{block}_{k}`.
    Relu { block: usize, k: usize },
    /// 2x2 max pooling, stride 2, at the end of a block: `pool{block}`.
    Pool { block: usize },
}

impl VggOp {
    /// The conventional name (`conv1_1`, `relu1_1`, ..., `pool1`).
    pub fn name(&self) -> String {
        match self {
            VggOp::Conv { block, k } => format!("conv{block}_{k}"),
            VggOp::Relu { block, k } => format!("relu{block}_{k}"),
            VggOp::Pool { block } => format!("pool{block}"),
        }
    }
}

/// How feature maps are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDistance {
    /// Mean absolute difference.
    #[default]
    L1,
    /// Mean squared difference.
    Mse,
}

/// `[loss.perceptual]`: the perceptual loss. Off by default (`relative_weight = 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerceptualConfig {
    /// Weight of the perceptual term relative to the L1 term: G's loss gains
    /// `relative_weight * l1_weight * perceptual`. 0 turns the loss off (no file is read).
    /// Useful range 0.1-1.0 (with ImageNet weights the feature distance of a blurry synthetic
    /// image is of the order of its pixel L1 error or larger). Default: 0.
    pub relative_weight: f64,
    /// safetensors file with torchvision's `features.N.weight/bias` keys (see the module
    /// docs). Required when `relative_weight > 0`. Default: unset.
    pub weights_file: Option<PathBuf>,
    /// SHA-256 of `weights_file`, recorded when the run starts; a resumed run refuses a file
    /// whose checksum differs. Leave unset in a config you write. Default: unset.
    pub weights_sha256: Option<String>,
    /// Layout of the file: "vgg16" or "vgg19". Default: "vgg16".
    pub variant: VggVariant,
    /// Layers whose outputs are compared, by conventional name (`relu1_2`, `relu2_2`,
    /// `relu3_3`, `relu4_3`; also `conv*_*` before the ReLU and `pool*`).
    /// Default: relu1_2, relu2_2, relu3_3, relu4_3 (Johnson et al. 2016).
    pub layers: Vec<String>,
    /// Weight of each layer in `layers` (same length), or empty for equal weights.
    /// Default: empty.
    pub layer_weights: Vec<f64>,
    /// "l1" or "mse". Default: "l1".
    pub distance: FeatureDistance,
}

impl Default for PerceptualConfig {
    fn default() -> Self {
        Self {
            relative_weight: 0.0,
            weights_file: None,
            weights_sha256: None,
            variant: VggVariant::Vgg16,
            layers: ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
                .map(String::from)
                .to_vec(),
            layer_weights: Vec::new(),
            distance: FeatureDistance::L1,
        }
    }
}

impl PerceptualConfig {
    /// Whether the loss is on.
    pub fn enabled(&self) -> bool {
        self.relative_weight > 0.0
    }

    /// Checks the fields (not the file: see [`Vgg::load`]). Errors name the field.
    pub fn validate(&self) -> Result<(), PerceptualError> {
        if !(self.relative_weight.is_finite() && self.relative_weight >= 0.0) {
            return Err(PerceptualError::Config(format!(
                "relative_weight must be finite and >= 0, got {}",
                self.relative_weight
            )));
        }
        self.validate_layers()?;
        if self.enabled() && self.weights_file.is_none() {
            return Err(PerceptualError::Config(
                "relative_weight > 0 needs weights_file (a safetensors export of torchvision's \
                 VGG features; nothing is downloaded)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks `layers` (names of the variant, no repeats) and `layer_weights`.
    fn validate_layers(&self) -> Result<(), PerceptualError> {
        let bad = |m: String| Err(PerceptualError::Config(m));
        if self.layers.is_empty() {
            return bad("layers must name at least one layer".into());
        }
        for (i, name) in self.layers.iter().enumerate() {
            if self.variant.layer_index(name).is_none() {
                return bad(format!(
                    "layers: {name:?} is not a layer of {} (names: {})",
                    self.variant.name(),
                    self.variant
                        .layout()
                        .iter()
                        .map(VggOp::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if self.layers[..i].contains(name) {
                return bad(format!("layers: {name:?} is listed twice"));
            }
        }
        if !self.layer_weights.is_empty() {
            if self.layer_weights.len() != self.layers.len() {
                return bad(format!(
                    "layer_weights has {} values for {} layers (give one per layer, or none \
                     for equal weights)",
                    self.layer_weights.len(),
                    self.layers.len()
                ));
            }
            if self
                .layer_weights
                .iter()
                .any(|w| !(w.is_finite() && *w >= 0.0))
                || self.layer_weights.iter().sum::<f64>() <= 0.0
            {
                return bad(format!(
                    "layer_weights must be finite, >= 0 and not all 0, got {:?}",
                    self.layer_weights
                ));
            }
        }
        Ok(())
    }

    /// The per-layer weights (equal when `layer_weights` is empty).
    pub fn effective_layer_weights(&self) -> Vec<f64> {
        if self.layer_weights.is_empty() {
            vec![1.0; self.layers.len()]
        } else {
            self.layer_weights.clone()
        }
    }

    /// Smallest image side the configured layers accept: each max pooling before the deepest
    /// layer halves the image, and a pooled side must stay at least 1 pixel.
    pub fn min_image_size(&self) -> i64 {
        let layout = self.variant.layout();
        let deepest = self
            .layers
            .iter()
            .filter_map(|n| self.variant.layer_index(n))
            .max()
            .unwrap_or(0);
        let pools = layout[..=deepest]
            .iter()
            .filter(|op| matches!(op, VggOp::Pool { .. }))
            .count() as u32;
        1i64 << pools
    }
}

/// A weights file or perceptual config that cannot be used. Every file error names the file
/// (and the key, when one is at fault).
#[derive(Debug, Error)]
pub enum PerceptualError {
    #[error("[loss.perceptual] {0}")]
    Config(String),
    #[error("VGG weights file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VGG weights file {path}: not a readable safetensors file: {message}")]
    NotSafetensors { path: PathBuf, message: String },
    #[error(
        "VGG weights file {path}: missing key {key:?} (a {variant} `features` export has a 3x3 \
         convolution at index {index})"
    )]
    MissingKey {
        path: PathBuf,
        key: String,
        variant: &'static str,
        index: usize,
    },
    #[error("VGG weights file {path}: key {key:?}: {problem}")]
    BadKey {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("VGG weights file {path}: SHA-256 {found} differs from {expected} recorded in the run's config (the file changed since the run started)")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// A module of the loaded network.
#[derive(Debug)]
enum Op {
    /// `[out, in, 3, 3]` weight and `[out]` bias, no gradient.
    Conv {
        weight: Tensor,
        bias: Tensor,
    },
    Relu,
    Pool,
}

/// VGG16/VGG19 `features` with frozen weights from a file, in torchvision's index order.
#[derive(Debug)]
pub struct Vgg {
    variant: VggVariant,
    ops: Vec<Op>,
    /// Output channels of each convolution, in order.
    widths: Vec<i64>,
    source: PathBuf,
}

impl Vgg {
    /// Reads and checks `path` (see the module docs) and moves the weights to `device` as
    /// float32 tensors without gradient.
    pub fn load(path: &Path, variant: VggVariant, device: Device) -> Result<Self, PerceptualError> {
        std::fs::metadata(path).map_err(|source| PerceptualError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let named =
            Tensor::read_safetensors(path).map_err(|e| PerceptualError::NotSafetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Self::from_named(named, variant, path, device)
    }

    /// Builds from named tensors as read from `source` (used in errors); see [`Vgg::load`].
    pub fn from_named(
        named: Vec<(String, Tensor)>,
        variant: VggVariant,
        source: &Path,
        device: Device,
    ) -> Result<Self, PerceptualError> {
        let bad = |key: &str, problem: String| PerceptualError::BadKey {
            path: source.to_path_buf(),
            key: key.to_owned(),
            problem,
        };
        // Accept `features.N.*` and a bare `N.*` export of `vgg.features.state_dict()`.
        let bare = !named.is_empty()
            && named.iter().all(|(k, _)| {
                k.split('.')
                    .next()
                    .is_some_and(|n| n.parse::<usize>().is_ok())
            });
        let mut by_key: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, t) in named {
            let full = if bare { format!("features.{key}") } else { key };
            if full.starts_with("features.") {
                by_key.insert(full, t);
            } else {
                debug!(key = %full, "VGG weights: ignoring a key outside `features`");
            }
        }
        let layout = variant.layout();
        // Any tensor at an index that is not a convolution of this layout: wrong variant,
        // batch-norm VGG, or not a VGG at all.
        for key in by_key.keys() {
            let mut parts = key.splitn(3, '.');
            let (_, index, param) = (parts.next(), parts.next(), parts.next());
            let index = index.and_then(|i| i.parse::<usize>().ok());
            let ok = match (index, param) {
                (Some(i), Some("weight" | "bias")) => {
                    matches!(layout.get(i), Some(VggOp::Conv { .. }))
                }
                _ => false,
            };
            if !ok {
                let at = match index.and_then(|i| layout.get(i)) {
                    Some(op) => format!(
                        "index {} is {} in {}",
                        index.unwrap_or(0),
                        op.name(),
                        variant.name()
                    ),
                    None => format!("{} has no such module", variant.name()),
                };
                return Err(bad(
                    key,
                    format!(
                        "not a convolution weight or bias of {}'s `features` ({at}); is this \
                         the other VGG variant, a batch-norm VGG, or another network?",
                        variant.name()
                    ),
                ));
            }
        }
        let mut ops = Vec::with_capacity(layout.len());
        let mut widths = Vec::new();
        let mut in_channels = 3i64;
        for (i, op) in layout.iter().enumerate() {
            match op {
                VggOp::Conv { .. } => {
                    let take = |param: &str| {
                        let key = format!("features.{i}.{param}");
                        by_key
                            .get(&key)
                            .map(|t| (key.clone(), t.shallow_clone()))
                            .ok_or_else(|| PerceptualError::MissingKey {
                                path: source.to_path_buf(),
                                key,
                                variant: variant.name(),
                                index: i,
                            })
                    };
                    let (wkey, weight) = take("weight")?;
                    let (bkey, bias) = take("bias")?;
                    for (key, t) in [(&wkey, &weight), (&bkey, &bias)] {
                        if !matches!(
                            t.kind(),
                            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                        ) {
                            return Err(bad(
                                key,
                                format!("expected floating point, got {:?}", t.kind()),
                            ));
                        }
                    }
                    let ws = weight.size();
                    if ws.len() != 4 || ws[2] != 3 || ws[3] != 3 || ws[0] < 1 {
                        return Err(bad(
                            &wkey,
                            format!("expected a 3x3 convolution weight [out, {in_channels}, 3, 3], got {ws:?}"),
                        ));
                    }
                    if ws[1] != in_channels {
                        let why = if i == 0 {
                            "the first convolution takes the 3 RGB channels".to_owned()
                        } else {
                            format!("the previous convolution outputs {in_channels} channels")
                        };
                        return Err(bad(
                            &wkey,
                            format!("has {} input channels, expected {in_channels} ({why}); shape {ws:?}", ws[1]),
                        ));
                    }
                    if bias.size() != [ws[0]] {
                        return Err(bad(
                            &bkey,
                            format!(
                                "expected shape [{}] (the weight's output channels), got {:?}",
                                ws[0],
                                bias.size()
                            ),
                        ));
                    }
                    in_channels = ws[0];
                    widths.push(ws[0]);
                    let prep = |t: Tensor| {
                        t.to_kind(Kind::Float)
                            .to_device(device)
                            .detach()
                            .set_requires_grad(false)
                    };
                    ops.push(Op::Conv {
                        weight: prep(weight),
                        bias: prep(bias),
                    });
                }
                VggOp::Relu { .. } => ops.push(Op::Relu),
                VggOp::Pool { .. } => ops.push(Op::Pool),
            }
        }
        let standard: Vec<i64> = variant
            .block_convs()
            .iter()
            .zip(VggVariant::TORCHVISION_WIDTHS)
            .flat_map(|(&n, w)| std::iter::repeat_n(w, n))
            .collect();
        if widths != standard {
            warn!(
                file = %source.display(),
                ?widths,
                "VGG weights have channel widths other than torchvision's {} (a test-sized or \
                 custom network, not ImageNet's VGG)",
                variant.name()
            );
        }
        debug!(file = %source.display(), variant = variant.name(), ?widths, "VGG features loaded");
        Ok(Self {
            variant,
            ops,
            widths,
            source: source.to_path_buf(),
        })
    }

    /// The layout followed.
    pub fn variant(&self) -> VggVariant {
        self.variant
    }

    /// Output channels of each convolution, in order.
    pub fn widths(&self) -> &[i64] {
        &self.widths
    }

    /// The file the weights came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The convolutions' weight and bias tensors, in order (all without gradient).
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.ops
            .iter()
            .flat_map(|op| match op {
                Op::Conv { weight, bias } => vec![weight, bias],
                _ => Vec::new(),
            })
            .collect()
    }

    /// Number of weight values (for logs).
    pub fn num_parameters(&self) -> i64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Conv { weight, bias } => weight.numel() as i64 + bias.numel() as i64,
                _ => 0,
            })
            .sum()
    }

    /// Runs `features` up to the deepest of `indices` and returns the output of each module in
    /// `indices` (torchvision indices, in the order given). The convolutions run in the input's
    /// kind (the float32 weights are cast when it differs).
    ///
    /// # Shapes
    /// * `x`: `[batch, 3, height, width]`, ImageNet-normalised (see [`imagenet_input`]).
    /// * returns, for index `i`: `[batch, channels_i, height / 2^p, width / 2^p]` with `p` the
    ///   number of poolings up to `i` (sizes rounded down).
    pub fn features(&self, x: &Tensor, indices: &[usize]) -> Vec<Tensor> {
        let Some(&deepest) = indices.iter().max() else {
            return Vec::new();
        };
        let mut outputs: Vec<Option<Tensor>> = (0..=deepest).map(|_| None).collect();
        let mut h = x.shallow_clone();
        for (i, op) in self.ops.iter().enumerate().take(deepest + 1) {
            h = match op {
                Op::Conv { weight, bias } => {
                    let (w, b) = if weight.kind() == h.kind() {
                        (weight.shallow_clone(), bias.shallow_clone())
                    } else {
                        (weight.to_kind(h.kind()), bias.to_kind(h.kind()))
                    };
                    // [batch, out, height, width]
                    h.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)
                }
                Op::Relu => h.relu(),
                // [batch, channels, height / 2, width / 2]
                Op::Pool => h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
            if indices.contains(&i) {
                outputs[i] = Some(h.shallow_clone());
            }
        }
        indices
            .iter()
            .filter_map(|&i| outputs[i].as_ref().map(Tensor::shallow_clone))
            .collect()
    }
}

/// The VGG input for a single-channel image in [-1, 1]: mapped to [0, 1], replicated to three
/// channels and normalised with ImageNet's mean and standard deviation.
///
/// # Shapes
/// `x`: `[batch, 1, height, width]` -> `[batch, 3, height, width]` (the input's kind).
pub fn imagenet_input(x: &Tensor) -> Tensor {
    let opts = (x.kind(), x.device());
    let mean = Tensor::from_slice(&IMAGENET_MEAN)
        .to_kind(opts.0)
        .to_device(opts.1);
    let std = Tensor::from_slice(&IMAGENET_STD)
        .to_kind(opts.0)
        .to_device(opts.1);
    // [batch, 1, height, width] in [0, 1]
    let unit = (x + 1.0) * 0.5;
    // [batch, 3, height, width]
    (unit.expand([-1, 3, -1, -1], false) - mean.view([1, 3, 1, 1])) / std.view([1, 3, 1, 1])
}

/// The perceptual loss: a frozen [`Vgg`], the compared layers and their weights.
#[derive(Debug)]
pub struct Perceptual {
    vgg: Vgg,
    /// (torchvision index, name) of each compared layer, in config order.
    layers: Vec<(usize, String)>,
    weights: Vec<f64>,
    distance: FeatureDistance,
    min_size: i64,
}

impl Perceptual {
    /// Builds the loss of `cfg` on a loaded network (checks the config's layers, which must be
    /// of the network's variant).
    pub fn new(vgg: Vgg, cfg: &PerceptualConfig) -> Result<Self, PerceptualError> {
        if cfg.variant != vgg.variant {
            return Err(PerceptualError::Config(format!(
                "variant {} does not match the loaded network ({})",
                cfg.variant.name(),
                vgg.variant.name()
            )));
        }
        cfg.validate_layers()?;
        let layers = cfg
            .layers
            .iter()
            .filter_map(|n| cfg.variant.layer_index(n).map(|i| (i, n.clone())))
            .collect();
        Ok(Self {
            vgg,
            layers,
            weights: cfg.effective_layer_weights(),
            distance: cfg.distance,
            min_size: cfg.min_image_size(),
        })
    }

    /// Loads the file of an enabled `cfg` onto `device`; `None` when the loss is off. The
    /// checksum in `cfg.weights_sha256` is the caller's to verify (the training crate hashes
    /// files with the workspace's one SHA-256 helper).
    pub fn from_config(
        cfg: &PerceptualConfig,
        device: Device,
    ) -> Result<Option<Self>, PerceptualError> {
        cfg.validate()?;
        let Some(path) = cfg.weights_file.as_deref().filter(|_| cfg.enabled()) else {
            return Ok(None);
        };
        let vgg = Vgg::load(path, cfg.variant, device)?;
        Self::new(vgg, cfg).map(Some)
    }

    /// The network.
    pub fn vgg(&self) -> &Vgg {
        &self.vgg
    }

    /// One line for logs: variant, file, layers and weights, distance.
    pub fn describe(&self) -> String {
        let layers: Vec<String> = self
            .layers
            .iter()
            .zip(&self.weights)
            .map(|((_, n), w)| format!("{n}:{w}"))
            .collect();
        format!(
            "{} from {} ({} parameters, widths {:?}), layers {}, {:?} distance",
            self.vgg.variant.name(),
            self.vgg.source.display(),
            self.vgg.num_parameters(),
            self.vgg.widths,
            layers.join(" "),
            self.distance
        )
    }

    /// Feature maps of the configured layers for an image in [-1, 1].
    ///
    /// # Shapes
    /// `x`: `[batch, 1, height, width]` -> one `[batch, c_l, h_l, w_l]` per layer, in config
    /// order.
    pub fn layer_features(&self, x: &Tensor) -> Result<Vec<Tensor>, LossError> {
        let size = x.size();
        if size.len() != 4 || size[1] != 1 {
            return Err(LossError::Shape {
                what: "perceptual loss input",
                expected: "[batch, 1, height, width]".into(),
                got: size,
            });
        }
        if size[2] < self.min_size || size[3] < self.min_size {
            return Err(LossError::InvalidParameter(format!(
                "the perceptual layers need images of at least {0}x{0} pixels (max poolings \
                 before the deepest layer), got {1}x{2}",
                self.min_size, size[2], size[3]
            )));
        }
        let indices: Vec<usize> = self.layers.iter().map(|(i, _)| *i).collect();
        Ok(self.vgg.features(&imagenet_input(x), &indices))
    }

    /// The weighted mean feature distance between `pred` and `target` (scalar, differentiable
    /// with respect to `pred`; the target's features are computed without gradient).
    ///
    /// # Shapes
    /// `pred`, `target`: `[batch, 1, height, width]` in [-1, 1] -> `[]`.
    pub fn loss(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor, LossError> {
        if target.size() != pred.size() {
            return Err(LossError::Shape {
                what: "perceptual loss target (must match the prediction)",
                expected: format!("{:?}", pred.size()),
                got: target.size(),
            });
        }
        let fp = self.layer_features(pred)?;
        let ft = tch::no_grad(|| self.layer_features(target))?;
        let kind = pred.kind();
        let total_weight: f64 = self.weights.iter().sum();
        let mut sum: Option<Tensor> = None;
        for ((p, t), &w) in fp.iter().zip(&ft).zip(&self.weights) {
            if w == 0.0 {
                continue;
            }
            let diff = p - t;
            let d = match self.distance {
                FeatureDistance::L1 => diff.abs().mean(kind),
                FeatureDistance::Mse => diff.square().mean(kind),
            };
            let term = d * w;
            sum = Some(match sum {
                Some(s) => s + term,
                None => term,
            });
        }
        Ok(sum.map_or_else(|| pred.zeros_like().sum(kind), |s| s / total_weight))
    }
}
