//! Sliding-window inference over a slice, the way nnU-Net predicts: G runs on overlapping
//! square tiles of the size it was trained on, and the tiles' outputs are blended with a
//! Gaussian importance map that trusts each tile's centre more than its borders.
//!
//! Why: G normalises every feature map by its own input's statistics (instance norm), so a
//! 96 px training crop and a whole 512 px slice are not the same input to it: the crop sees
//! a part of the body, the slice the body, air and table. On the #16 benchmark that
//! mismatch shows as an offset of G's output over tissue that needs no change; tiles of the
//! training crop give G at inference what it saw in training.
//!
//! Tile positions along each axis follow nnU-Net's `compute_steps_for_sliding_window`: the
//! fewest tiles whose spacing is at most `step` x the tile, spread evenly from one border to
//! the other (the first tile at 0, the last flush with the far border). The importance map is
//! nnU-Net's: a Gaussian with sigma = tile / 8 centred on the tile, scaled to 1 at its centre.
//! Every pixel of the slice is covered by at least one tile; an axis no longer than the tile
//! is covered by one tile of the axis' length.
//!
//! Which tiles: the training config's `[inference]` ([`InferenceSettings`]: the training crop
//! by default) is what validation runs and what every checkpoint records, and [`resolve`]
//! makes `predict` and `evaluate --model` run the same unless told otherwise, so a model's
//! validation score is the score of what `predict` writes.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// nnU-Net's default overlap: tiles a half tile apart.
pub const DEFAULT_STEP: f64 = 0.5;
/// nnU-Net's Gaussian: sigma = this x the tile's side.
pub const SIGMA_SCALE: f64 = 1.0 / 8.0;

/// Tiled inference: square tiles of `size` pixels, `step` x `size` apart at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tiling {
    pub size: usize,
    /// The largest distance between neighbouring tiles, as a fraction of the tile, in (0, 1].
    pub step: f64,
}

impl Tiling {
    /// A tiling of `size` px tiles `step` apart; errors name what is wrong. `multiple`: G's
    /// size multiple (`2^depth`), which every tile must be a multiple of.
    pub fn new(size: usize, step: f64, multiple: usize) -> Result<Self> {
        check_step(step)?;
        if size == 0 || multiple == 0 || !size.is_multiple_of(multiple) {
            bail!(
                "tiles of {size} px: the generator needs a multiple of {multiple} px \
                 (2^depth)"
            );
        }
        Ok(Self { size, step })
    }
}

/// Errors unless `step` is a fraction of a tile in (0, 1].
fn check_step(step: f64) -> Result<()> {
    if !(step > 0.0 && step <= 1.0) {
        bail!("the tile step {step} must be in (0, 1] (a fraction of the tile)");
    }
    Ok(())
}

/// A tile size as users give it (`--tile PX|auto|whole`, `[inference] tile`): pixels, the
/// crop the model was trained on, or no tiles (G on the whole slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileSize {
    Whole,
    Auto,
    Px(usize),
}

impl std::str::FromStr for TileSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "whole" => Ok(Self::Whole),
            px => px
                .parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .map(Self::Px)
                .ok_or_else(|| {
                    format!("expected a tile size in pixels, 'auto' or 'whole', got '{s}'")
                }),
        }
    }
}

impl std::fmt::Display for TileSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole => f.write_str("whole"),
            Self::Auto => f.write_str("auto"),
            Self::Px(px) => write!(f, "{px}"),
        }
    }
}

/// In TOML and JSON: `"whole"`, `"auto"` or a number of pixels.
impl Serialize for TileSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Px(px) => s.serialize_u64(*px as u64),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for TileSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Px(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Px(px) => usize::try_from(px)
                .ok()
                .filter(|v| *v > 0)
                .map(Self::Px)
                .ok_or_else(|| serde::de::Error::custom(format!("a tile of {px} px"))),
            Raw::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How G runs over a slice at inference, as a training run records it (`[inference]` in the
/// training config, `config.inference` in every checkpoint's `state.json`): what validation
/// scores, and what `predict` and `evaluate --model` do unless told otherwise. Unknown keys
/// are refused (a typo in a config); a checkpoint's are read through [`Self::from_recorded`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    /// `"whole"`, `"auto"` (the training crop) or pixels. Default: `"auto"`.
    pub tile: TileSize,
    /// The largest distance between neighbouring tiles, a fraction of the tile. Default: 0.5.
    pub tile_step: f64,
    /// Test-time augmentation ([`crate::tta`]): `"auto"` (the mirrors training augmented
    /// with), `"none"`, `"flip"` or `"full"`. Default: `"auto"`.
    pub tta: crate::tta::TtaMode,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            tile: TileSize::Auto,
            tile_step: DEFAULT_STEP,
            tta: crate::tta::TtaMode::Auto,
        }
    }
}

impl InferenceSettings {
    /// The keys this build reads.
    const KEYS: [&'static str; 3] = ["tile", "tile_step", "tta"];

    /// The settings a checkpoint records (`config.inference` of its `state.json`), ignoring
    /// keys a newer build may add, as the rest of a checkpoint's description is read. A
    /// checkpoint from before `tta` was recorded validated without it: `"none"`.
    pub fn from_recorded(mut table: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        table.retain(|k, _| Self::KEYS.contains(&k.as_str()));
        table
            .entry("tta")
            .or_insert_with(|| crate::tta::TtaMode::None.to_string().into());
        serde_json::from_value(table.into()).context("config.inference")
    }

    /// What a checkpoint written before runs recorded their inference did: whole slices without
    /// test-time augmentation, which is what its validation scored.
    pub const WHOLE: Self = Self {
        tile: TileSize::Whole,
        tile_step: DEFAULT_STEP,
        tta: crate::tta::TtaMode::None,
    };

    /// The tiling for a G of size `multiple` trained on `crop` px crops (`None`: unknown);
    /// `None` for whole slices. Errors say what is wrong with the size or the step.
    pub fn tiling(&self, crop: Option<usize>, multiple: usize) -> Result<Option<Tiling>> {
        // checked even for whole slices: a later --tile would run it
        check_step(self.tile_step)?;
        let px = match self.tile {
            TileSize::Whole => return Ok(None),
            TileSize::Px(px) => px,
            TileSize::Auto => crop.context(
                "tiles of the training crop need the crop, which this checkpoint does not \
                 record; give the tile size in pixels",
            )?,
        };
        Tiling::new(px, self.tile_step, multiple).map(Some)
    }
}

/// Each model's checkpoint and what `f` says of it, for errors about an ensemble.
pub(crate) fn describe_models(
    models: &[crate::checkpoint::LoadedGenerator],
    f: &dyn Fn(&crate::checkpoint::LoadedGenerator) -> String,
) -> String {
    models
        .iter()
        .map(|m| format!("{} {}", m.checkpoint.display(), f(m)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tiling an ensemble runs: `size` and `step` when given (`--tile`, `--tile-step`),
/// otherwise what the checkpoints record ([`InferenceSettings`]; whole slices for a checkpoint
/// that records none), which must then be one setting for all. Every model must be able to run
/// it (a multiple of its `2^depth`), and with `auto` all must have been trained on one crop.
/// `None`: whole slices. Errors name the models.
pub fn resolve(
    size: Option<TileSize>,
    step: Option<f64>,
    models: &[crate::checkpoint::LoadedGenerator],
) -> Result<Option<Tiling>> {
    // a step given is checked even where the tiling turns out whole
    step.map(check_step).transpose()?;
    let recorded: Vec<InferenceSettings> = models
        .iter()
        .map(|m| m.inference.unwrap_or(InferenceSettings::WHOLE))
        .collect();
    let settings = match recorded.as_slice() {
        [] => return Ok(None),
        [first, ..] => InferenceSettings {
            tile: size.unwrap_or(first.tile),
            tile_step: step.unwrap_or(first.tile_step),
            ..*first
        },
    };
    let disagree = |f: &dyn Fn(&InferenceSettings) -> String| {
        let v: Vec<String> = recorded.iter().map(f).collect();
        v.iter().any(|x| *x != v[0])
    };
    if size.is_none() && disagree(&|s| s.tile.to_string()) {
        bail!(
            "the models were validated on different tiles ({}); choose one with --tile",
            describe_models(models, &|m| m.inference.map_or(
                "whole (not recorded)".into(),
                |s| format!("tile {}", s.tile)
            ))
        );
    }
    if step.is_none() && settings.tile != TileSize::Whole && disagree(&|s| s.tile_step.to_string())
    {
        bail!(
            "the models record different tile steps ({}); choose one with --tile-step",
            describe_models(models, &|m| m
                .inference
                .map_or("(not recorded)".into(), |s| s.tile_step.to_string()))
        );
    }
    if settings.tile == TileSize::Auto {
        let crops: Vec<_> = models.iter().map(|m| m.train_crop).collect();
        if !crops.iter().all(|c| c.is_some() && *c == crops[0]) {
            bail!(
                "tiles of the training crop need the crop of every model, and one crop for \
                 all: the checkpoints say {}; give the tile size in pixels",
                describe_models(models, &|m| m
                    .train_crop
                    .map_or("(none)".into(), |c| format!("{c} px")))
            );
        }
    }
    let mut tiling = None;
    for m in models {
        let multiple = usize::try_from(m.generator.config().size_multiple()).unwrap_or(0);
        tiling = settings
            .tiling(m.train_crop, multiple)
            .with_context(|| format!("tiles for the model {}", m.checkpoint.display()))?;
    }
    match &tiling {
        Some(t) => tracing::info!(size = t.size, step = t.step, "tiled inference"),
        None => tracing::info!("inference on whole slices"),
    }
    Ok(tiling)
}

/// Where the tiles of one axis of `extent` pixels start (see the module docs).
pub fn positions(extent: usize, tile: usize, step: f64) -> Vec<usize> {
    if extent <= tile {
        return vec![0];
    }
    let span = (extent - tile) as f64;
    let n = (span / (tile as f64 * step)).ceil() as usize + 1;
    let actual = span / (n - 1) as f64;
    (0..n)
        .map(|i| (actual * i as f64).round() as usize)
        .collect()
}

/// The `height` x `width` importance map: a Gaussian of sigma `SIGMA_SCALE` x the side
/// centred on the tile, 1 at its centre.
///
/// # Shapes
/// returns [height, width], f32, on `device`
pub fn importance(height: usize, width: usize, device: tch::Device) -> Tensor {
    let axis = |n: usize| {
        let c = (n as f64 - 1.0) / 2.0;
        let sigma = n as f64 * SIGMA_SCALE;
        let i = Tensor::arange(n as i64, (Kind::Float, device));
        ((i - c) / sigma).square() * -0.5
    };
    // exp(a_y + a_x), the separable Gaussian, >= exp(-32) at a square tile's corners
    (axis(height).unsqueeze(1) + axis(width).unsqueeze(0)).exp()
}

/// `forward` over the tiles of `x`, blended with the importance map.
///
/// # Shapes
/// `x`: [batch, channels, height, width]; `forward`: [batch, channels, h, w] ->
/// [batch, out, h, w] for the tiles' h, w; returns [batch, out, height, width]
pub fn forward_tiled(
    x: &Tensor,
    tiling: &Tiling,
    mut forward: impl FnMut(&Tensor) -> Tensor,
) -> Tensor {
    let size = x.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    if height <= tiling.size && width <= tiling.size {
        return forward(x);
    }
    let (th, tw) = (tiling.size.min(height), tiling.size.min(width));
    let (ys, xs) = (
        positions(height, th, tiling.step),
        positions(width, tw, tiling.step),
    );
    tracing::trace!(height, width, tile = tiling.size, ?ys, ?xs, "tiled forward");
    let g = importance(th, tw, x.device());
    let mut sum: Option<Tensor> = None;
    let weight = Tensor::zeros([height as i64, width as i64], (Kind::Float, x.device()));
    for &y0 in &ys {
        for &x0 in &xs {
            let tile = x
                .narrow(2, y0 as i64, th as i64)
                .narrow(3, x0 as i64, tw as i64);
            let out = forward(&tile).to_kind(Kind::Float);
            let acc = sum.get_or_insert_with(|| {
                let s = out.size();
                Tensor::zeros(
                    [s[0], s[1], height as i64, width as i64],
                    (Kind::Float, x.device()),
                )
            });
            let _ = acc
                .narrow(2, y0 as i64, th as i64)
                .narrow(3, x0 as i64, tw as i64)
                .g_add_(&(out * &g));
            let _ = weight
                .narrow(0, y0 as i64, th as i64)
                .narrow(1, x0 as i64, tw as i64)
                .g_add_(&g);
        }
    }
    // every pixel lies in some tile, whose map is positive everywhere
    match sum {
        Some(s) => s / weight,
        None => forward(x),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn positions_cover_the_axis_evenly_from_border_to_border() {
        // nnU-Net's compute_steps_for_sliding_window, worked by hand
        assert_eq!(positions(128, 96, 0.5), vec![0, 32]);
        assert_eq!(
            positions(512, 96, 0.5),
            vec![0, 46, 92, 139, 185, 231, 277, 324, 370, 416]
        );
        assert_eq!(positions(96, 96, 0.5), vec![0]);
        assert_eq!(positions(64, 96, 0.5), vec![0]);
        assert_eq!(positions(200, 96, 1.0), vec![0, 52, 104]);
        for (extent, tile, step) in [(129, 96, 0.5), (1000, 128, 0.3), (97, 96, 0.5)] {
            let p = positions(extent, tile, step);
            assert_eq!(p[0], 0);
            assert_eq!(*p.last().unwrap(), extent - tile, "{p:?}");
            for w in p.windows(2) {
                assert!(
                    w[1] > w[0] && (w[1] - w[0]) as f64 <= tile as f64 * step,
                    "{p:?}"
                );
            }
        }
    }

    #[test]
    fn the_importance_map_is_nnunets_gaussian() {
        let g = importance(96, 64, Device::Cpu);
        assert_eq!(g.size(), vec![96, 64]);
        // the two central pixels of an even side sit half a pixel off the centre
        let centre = g.double_value(&[47, 31]);
        let half_px = (-0.5 * (0.5f64 / 12.0).powi(2) - 0.5 * (0.5f64 / 8.0).powi(2)).exp();
        assert!((centre - half_px).abs() < 1e-6, "{centre}");
        // 12 px further along y (sigma = 96 / 8 = 12 px): from 0.5 to 11.5 px off the centre
        let row = g.double_value(&[47 + 12, 31]) / centre;
        let expected = (-0.5 * ((11.5f64 / 12.0).powi(2) - (0.5f64 / 12.0).powi(2))).exp();
        assert!((row - expected).abs() < 1e-5, "{row}");
        assert!(g.min().double_value(&[]) > 0.0);
    }

    #[test]
    fn a_pointwise_forward_is_reproduced_exactly_and_tiles_see_only_their_part() {
        tch::manual_seed(0);
        let x = Tensor::rand([2, 3, 128, 160], (Kind::Float, Device::Cpu));
        let tiling = Tiling::new(64, 0.5, 8).unwrap();
        // pointwise: blending identical values gives the value back
        let f = |t: &Tensor| t.sum_dim_intlist(1, true, Kind::Float) * 2.0 - 1.0;
        let tiled = forward_tiled(&x, &tiling, f);
        let whole = f(&x);
        assert_eq!(tiled.size(), vec![2, 1, 128, 160]);
        assert!((tiled - whole).abs().max().double_value(&[]) < 1e-5);
        // every forward sees a 64 x 64 tile: 3 x 4 tiles
        let mut seen = Vec::new();
        let _ = forward_tiled(&x, &tiling, |t| {
            seen.push(t.size());
            t.narrow(1, 0, 1)
        });
        assert_eq!(seen.len(), 3 * 4);
        assert!(seen.iter().all(|s| s == &vec![2, 3, 64, 64]));
        // a per-tile offset (what an image-dependent normalisation adds) is blended: the
        // result lies between the tiles' values, weighted towards the nearer tile's centre
        let mut k = 0.0;
        let blended = forward_tiled(&x.narrow(2, 0, 64), &tiling, |t| {
            k += 1.0;
            t.narrow(1, 0, 1).zeros_like() + k
        });
        // 1 x 4 tiles along x at 0, 32, 64, 96: the first column is tile 1's alone
        assert!((blended.double_value(&[0, 0, 10, 0]) - 1.0).abs() < 1e-6);
        assert!((blended.double_value(&[0, 0, 10, 159]) - 4.0).abs() < 1e-6);
        // halfway between the centres of tiles 1 and 2 (x = 47.5): their mean, 1.5, up to
        // the faint weights of tiles 3 and 4
        let mid = blended.double_value(&[0, 0, 10, 48]);
        assert!(mid > 1.4 && mid < 1.7, "{mid}");
    }

    /// A loaded tiny G (depth 3: multiples of 8) from `checkpoint`, trained on `crop`.
    pub(crate) fn loaded(
        checkpoint: &str,
        crop: Option<usize>,
    ) -> crate::checkpoint::LoadedGenerator {
        recorded(checkpoint, crop, None)
    }

    /// As [`loaded`], its checkpoint recording `inference`, trained mirroring left-right.
    pub(crate) fn recorded(
        checkpoint: &str,
        crop: Option<usize>,
        inference: Option<InferenceSettings>,
    ) -> crate::checkpoint::LoadedGenerator {
        let store = tch::nn::VarStore::new(Device::Cpu);
        let cfg = model::config::ModelConfig::preset("tiny")
            .unwrap()
            .generator;
        let generator = model::generator::Generator::new(&store.root(), &cfg);
        crate::checkpoint::LoadedGenerator {
            store,
            generator,
            window: Default::default(),
            checkpoint: checkpoint.into(),
            step: 1,
            ema: false,
            train_crop: crop,
            train_mirrors: Some([true, false]),
            inference,
        }
    }

    #[test]
    fn auto_takes_the_one_training_crop_and_names_the_models_that_disagree() {
        let (a32, b32) = (loaded("runs/a", Some(32)), loaded("runs/b", Some(32)));
        let t = resolve(Some(TileSize::Auto), Some(0.5), &[a32, b32]).unwrap();
        assert_eq!(
            t,
            Some(Tiling {
                size: 32,
                step: 0.5
            })
        );
        assert_eq!("auto".parse(), Ok(TileSize::Auto));
        assert_eq!("whole".parse(), Ok(TileSize::Whole));
        assert_eq!(" 96".parse(), Ok(TileSize::Px(96)));
        assert!("0".parse::<TileSize>().is_err() && "big".parse::<TileSize>().is_err());
        // two crops, or a checkpoint that does not record one: refused, each model named
        let e = resolve(
            Some(TileSize::Auto),
            None,
            &[loaded("runs/a", Some(32)), loaded("runs/c", Some(64))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("runs/a 32 px") && e.contains("runs/c 64 px"),
            "{e}"
        );
        let e = resolve(Some(TileSize::Auto), None, &[loaded("hand-made", None)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hand-made (none)") && e.contains("in pixels"),
            "{e}"
        );
        // a size one model cannot run: that model named
        let e = resolve(Some(TileSize::Px(36)), None, &[loaded("runs/a", Some(32))]).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("runs/a") && e.contains("multiple of 8"), "{e}");
        assert!(resolve(Some(TileSize::Px(40)), Some(0.0), &[loaded("runs/a", None)]).is_err());
    }

    #[test]
    fn without_a_tile_the_checkpoints_recorded_inference_is_run() {
        let auto = InferenceSettings::default();
        let px = |tile, tile_step| InferenceSettings {
            tile: TileSize::Px(tile),
            tile_step,
            ..InferenceSettings::default()
        };
        // what validation ran: the training crop, or the recorded size and step
        let t = resolve(None, None, &[recorded("runs/a", Some(32), Some(auto))]).unwrap();
        assert_eq!(
            t,
            Some(Tiling {
                size: 32,
                step: 0.5
            })
        );
        let t = resolve(
            None,
            None,
            &[recorded("runs/a", Some(32), Some(px(48, 0.25)))],
        );
        assert_eq!(
            t.unwrap(),
            Some(Tiling {
                size: 48,
                step: 0.25
            })
        );
        // a checkpoint that records nothing was validated on whole slices
        assert_eq!(
            resolve(None, None, &[loaded("runs/old", Some(32))]).unwrap(),
            None
        );
        // --tile and --tile-step override the record, each on its own
        let a = || [recorded("runs/a", Some(32), Some(px(48, 0.25)))];
        assert_eq!(resolve(Some(TileSize::Whole), None, &a()).unwrap(), None);
        let t = resolve(None, Some(1.0), &a()).unwrap();
        assert_eq!(
            t,
            Some(Tiling {
                size: 48,
                step: 1.0
            })
        );
        // an ensemble whose members ran differently: refused, each named, unless told
        let mixed = || {
            [
                recorded("runs/a", Some(32), Some(auto)),
                loaded("runs/old", Some(32)),
            ]
        };
        let e = resolve(None, None, &mixed()).unwrap_err().to_string();
        assert!(
            e.contains("runs/a tile auto")
                && e.contains("runs/old whole (not recorded)")
                && e.contains("--tile"),
            "{e}"
        );
        let t = resolve(Some(TileSize::Px(64)), None, &mixed()).unwrap();
        assert_eq!(
            t,
            Some(Tiling {
                size: 64,
                step: 0.5
            })
        );
        let steps = [
            recorded("runs/a", Some(32), Some(px(48, 0.25))),
            recorded("runs/b", Some(32), Some(px(48, 0.5))),
        ];
        let e = resolve(None, None, &steps).unwrap_err().to_string();
        assert!(e.contains("runs/b 0.5") && e.contains("--tile-step"), "{e}");
        // the settings read as the training config writes them
        let s: InferenceSettings = serde_json::from_str(r#"{"tile": 112}"#).unwrap();
        assert_eq!(s, px(112, 0.5));
        let s: InferenceSettings = serde_json::from_str(r#"{"tile": "whole"}"#).unwrap();
        assert_eq!(s.tile, TileSize::Whole);
        assert_eq!(
            serde_json::to_string(&px(96, 0.5)).unwrap(),
            r#"{"tile":96,"tile_step":0.5,"tta":"auto"}"#
        );
        assert!(serde_json::from_str::<InferenceSettings>(r#"{"tile": "big"}"#).is_err());
        assert!(serde_json::from_str::<InferenceSettings>(r#"{"tile": 0}"#).is_err());
        // a config's unknown key is refused; a checkpoint's (a newer build's) is ignored
        let mut t = serde_json::Map::new();
        t.insert("tile".into(), 64.into());
        t.insert("from_the_future".into(), true.into());
        assert!(serde_json::from_value::<InferenceSettings>(t.clone().into()).is_err());
        // a checkpoint from before `tta` was recorded validated without it
        let before_tta = InferenceSettings {
            tta: crate::tta::TtaMode::None,
            ..px(64, 0.5)
        };
        assert_eq!(
            InferenceSettings::from_recorded(t.clone()).unwrap(),
            before_tta
        );
        t.insert("tta".into(), "flip".into());
        assert_eq!(
            InferenceSettings::from_recorded(t.clone()).unwrap().tta,
            crate::tta::TtaMode::Flip
        );
        // a value this build does not know is refused, naming the key, the value and the choices
        t.insert("tta".into(), "mirror".into());
        let e = format!("{:#}", InferenceSettings::from_recorded(t).unwrap_err());
        assert!(
            e.contains("config.inference") && e.contains("mirror") && e.contains("`flip`"),
            "{e}"
        );
    }

    #[test]
    fn small_slices_run_whole_and_bad_tilings_are_refused() {
        let x = Tensor::ones([1, 1, 64, 48], (Kind::Float, Device::Cpu));
        let tiling = Tiling::new(96, 0.5, 8).unwrap();
        let mut calls = 0;
        let y = forward_tiled(&x, &tiling, |t| {
            calls += 1;
            t * 3.0
        });
        assert_eq!(calls, 1);
        assert_eq!(y.double_value(&[0, 0, 5, 5]), 3.0);
        let e = Tiling::new(100, 0.5, 8).unwrap_err().to_string();
        assert!(e.contains("multiple of 8"), "{e}");
        assert!(Tiling::new(96, 0.0, 8).is_err());
        assert!(Tiling::new(96, 1.5, 8).is_err());
    }
}
