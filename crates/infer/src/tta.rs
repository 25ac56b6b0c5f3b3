//! Test-time augmentation: G runs on transformed copies of a batch (mirrors, small in-plane
//! rotations), each prediction is mapped back to where it came from, and they are averaged,
//! each weighted by where its back-mapped field of view is valid (a rotation leaves the
//! corners without a prediction).
//!
//! Which views ([`TtaMode`], `[inference] tta` in training, `predict --tta`): by default
//! (`auto`) the mirrors training augmented with, as nnU-Net mirrors at inference along the
//! axes it mirrored in training (`data.augment.flip_x_prob` and `flip_y_prob` above 0: every
//! combination of those axes; none when training did not mirror). A mirror is exact (no
//! resampling), so it averages G's own variation across the mirror and nothing else; on the
//! #16 benchmark it lowered every MAE of every seed a little. Rotations resample the input and
//! the output bilinearly and blur what a residual G passes through (`full`; worse on the
//! benchmark, kept for comparison).
//!
//! Validation runs the same views as `predict` ([`forward`]), so a run's `best` is chosen on
//! what `predict` writes.

use anyhow::{bail, Context, Result};
use model::generator::Generator;
use serde::{Deserialize, Serialize};
use tch::{nn::ModuleT, Tensor};

/// The views of test-time augmentation: the identity plus, optionally, left-right and
/// anterior-posterior mirrors (every combination of the two when both) and in-plane rotations
/// by each angle in `rotations_deg` (about the slice centre).
#[derive(Debug, Clone, PartialEq)]
pub struct Tta {
    pub flip_x: bool,
    pub flip_y: bool,
    pub rotations_deg: Vec<f64>,
}

impl Default for Tta {
    /// The left-right mirror: two passes, exact (no resampling), as nnU-Net's test-time
    /// mirroring. On the #16 benchmark (10 seeds, 112 px tiles) it lowered every MAE of every
    /// seed a little (arteries by 2.6 ± 1.6 HU) and kept the enhancement.
    fn default() -> Self {
        Self::mirrors(true, false)
    }
}

impl Tta {
    /// Mirrors along x (left-right) and/or y (anterior-posterior), no rotations.
    pub fn mirrors(flip_x: bool, flip_y: bool) -> Self {
        Self {
            flip_x,
            flip_y,
            rotations_deg: Vec::new(),
        }
    }

    /// The left-right mirror and rotations by +-5 degrees: four passes, inside the trainer's
    /// default augmentation (flips with p = 0.5, rotations up to 10 degrees). The rotations
    /// resample the input and the output bilinearly, which blurs what a residual G passes
    /// through: on the #16 benchmark they cost 19 HU of artery MAE and 8 HU of body MAE
    /// against the mirror.
    pub fn with_rotations() -> Self {
        Self {
            rotations_deg: vec![-5.0, 5.0],
            ..Self::default()
        }
    }

    /// The views G runs on, the identity first.
    fn views(&self) -> Vec<View> {
        let mut v = vec![View::Identity];
        if self.flip_x {
            v.push(View::Flip(&[3]));
        }
        if self.flip_y {
            v.push(View::Flip(&[2]));
        }
        if self.flip_x && self.flip_y {
            v.push(View::Flip(&[2, 3]));
        }
        v.extend(
            self.rotations_deg
                .iter()
                .filter(|a| **a != 0.0)
                .map(|a| View::Rotate(*a)),
        );
        v
    }

    /// How many times G runs per slice.
    pub fn passes(&self) -> usize {
        self.views().len()
    }
}

/// One view of a batch: how to transform G's input and map its output back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum View {
    Identity,
    /// Mirrored along these dimensions of `[batch, channels, height, width]`.
    Flip(&'static [i64]),
    Rotate(f64),
}

/// G over `x` in eval mode, averaged over `tta`'s views (each mapped back, weighted by where
/// it is valid); plain G without TTA. What `predict` and validation run on a slice or a tile.
///
/// # Shapes
/// `x`: [batch, in_channels, height, width] -> [batch, 1, height, width]
pub fn forward(g: &Generator, x: &Tensor, tta: Option<&Tta>) -> Tensor {
    let Some(tta) = tta else {
        return g.forward_t(x, false);
    };
    let mut sum: Option<Tensor> = None;
    let mut weight: Option<Tensor> = None;
    for view in tta.views() {
        let (pred, w) = match view {
            View::Identity => (g.forward_t(x, false), None),
            View::Flip(dims) => (g.forward_t(&x.flip(dims), false).flip(dims), None),
            View::Rotate(deg) => {
                let rotated = rotate(x, deg, -1.0);
                let y = rotate(&g.forward_t(&rotated, false), -deg, 0.0);
                // Where the back-rotated prediction saw real input: ones through both maps.
                let ones = x.ones_like().narrow(1, 0, 1);
                let valid = rotate(&rotate(&ones, deg, 0.0), -deg, 0.0);
                (y, Some(valid))
            }
        };
        let (contribution, w) = match w {
            Some(w) => (&pred * &w, w),
            None => (pred.shallow_clone(), pred.ones_like()),
        };
        sum = Some(match sum {
            Some(s) => s + contribution,
            None => contribution,
        });
        weight = Some(match weight {
            Some(acc) => acc + w,
            None => w,
        });
    }
    match (sum, weight) {
        (Some(s), Some(w)) => s / w.clamp_min(1e-6),
        _ => g.forward_t(x, false),
    }
}

/// Rotates each image of a batch by `deg` degrees about its centre in pixel space (bilinear,
/// align_corners = true), filling outside the field of view with `fill`.
///
/// # Shapes
/// `x`: [batch, channels, height, width] -> same
fn rotate(x: &Tensor, deg: f64, fill: f64) -> Tensor {
    let (b, _c, h, w) = x.size4().unwrap_or((1, 1, 1, 1));
    let (sin, cos) = deg.to_radians().sin_cos();
    // Normalised coordinates scale x by (w-1)/2 and y by (h-1)/2, so a pixel-space rotation
    // becomes [[cos, -sin*sy/sx], [sin*sx/sy, cos]].
    let sx = ((w - 1).max(1)) as f64 / 2.0;
    let sy = ((h - 1).max(1)) as f64 / 2.0;
    let theta = Tensor::from_slice(&[
        cos as f32,
        (-sin * sy / sx) as f32,
        0.0,
        (sin * sx / sy) as f32,
        cos as f32,
        0.0,
    ])
    .reshape([1, 2, 3])
    .expand([b, 2, 3], true)
    .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size(), true);
    // grid_sampler(input, grid, interpolation 0 = bilinear, padding 0 = zeros, align_corners)
    let shifted = x - fill;
    shifted.grid_sampler(&grid, 0, 0, true) + fill
}

/// Test-time augmentation as users choose it (`[inference] tta`, `predict --tta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtaMode {
    /// G once per slice.
    None,
    /// The mirrors training augmented with (nnU-Net's convention); none if it mirrored nothing.
    Auto,
    /// The slice and its left-right mirror.
    Flip,
    /// The left-right mirror and rotations by -5 and +5 degrees (they resample and blur).
    Full,
}

impl std::fmt::Display for TtaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Auto => "auto",
            Self::Flip => "flip",
            Self::Full => "full",
        })
    }
}

impl std::str::FromStr for TtaMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "none" => Ok(Self::None),
            "auto" => Ok(Self::Auto),
            "flip" => Ok(Self::Flip),
            "full" => Ok(Self::Full),
            other => Err(format!(
                "expected none, auto, flip or full for test-time augmentation, got '{other}'"
            )),
        }
    }
}

impl TtaMode {
    /// The views for a model trained with `train_mirrors` (`[x, y]`: whether training
    /// mirrored along each axis; `None`: unknown); `None` for one pass. `auto` needs to know.
    pub fn views(self, train_mirrors: Option<[bool; 2]>) -> Result<Option<Tta>> {
        Ok(match self {
            Self::None => None,
            Self::Flip => Some(Tta::default()),
            Self::Full => Some(Tta::with_rotations()),
            Self::Auto => {
                let [x, y] = train_mirrors.context(
                    "tta \"auto\" mirrors as training did, which this checkpoint does not \
                     record; choose flip or none",
                )?;
                (x || y).then(|| Tta::mirrors(x, y))
            }
        })
    }
}

/// `[x, y]` mirrors as a reader says them.
fn mirrors_in_words(mirrors: Option<[bool; 2]>) -> &'static str {
    match mirrors {
        None => "(not recorded)",
        Some([false, false]) => "nothing",
        Some([true, false]) => "left-right",
        Some([false, true]) => "anterior-posterior",
        Some([true, true]) => "left-right and anterior-posterior",
    }
}

/// The test-time augmentation an ensemble runs: `mode` when given (`--tta`), otherwise what
/// each checkpoint records (none for a checkpoint that records none); every member must then
/// run the same views (`auto` resolved with the mirrors it was trained with). `None`: one
/// pass. Errors name the models.
pub fn resolve(
    mode: Option<TtaMode>,
    models: &[crate::checkpoint::LoadedGenerator],
) -> Result<Option<Tta>> {
    let recorded = |m: &crate::checkpoint::LoadedGenerator| m.inference.map(|s| s.tta);
    let mut views = Vec::with_capacity(models.len());
    for m in models {
        let chosen = mode.or(recorded(m)).unwrap_or(TtaMode::None);
        views.push(
            chosen
                .views(m.train_mirrors)
                .with_context(|| format!("test-time augmentation of {}", m.checkpoint.display()))?,
        );
    }
    // what runs must agree, not how it was spelled (`auto` of a left-right-mirrored run is
    // `flip`)
    if views.iter().any(|v| *v != views[0]) {
        bail!(
            "the models would run different test-time augmentation ({}); choose one with --tta",
            crate::tiles::describe_models(models, &|m| format!(
                "tta {}, trained mirroring {}",
                recorded(m).map_or("none (not recorded)".into(), |t| t.to_string()),
                mirrors_in_words(m.train_mirrors)
            ))
        );
    }
    let tta = views.into_iter().next().flatten();
    match &tta {
        Some(t) => tracing::info!(
            flip_x = t.flip_x, flip_y = t.flip_y, rotations = ?t.rotations_deg,
            passes = t.passes(), "test-time augmentation"
        ),
        None => tracing::info!("no test-time augmentation"),
    }
    Ok(tta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::ModelConfig;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    fn tiny_generator(vs: &VarStore) -> Generator {
        let cfg = ModelConfig::preset("tiny").expect("tiny preset");
        Generator::new(&vs.root().sub("g"), &cfg.generator)
    }

    /// Rotating by an angle and back reproduces the interior (bilinear twice is a mild blur),
    /// and a 90-degree rotation of a square image equals the exact index rotation.
    #[test]
    fn rotation_round_trip_and_exact_quarter_turn() {
        let img = Tensor::arange(36, (Kind::Float, Device::Cpu)).reshape([1, 1, 6, 6]);
        let quarter = rotate(&img, 90.0, 0.0);
        let exact = img.rot90(1, [2, 3]);
        let diff = (&quarter - &exact).abs().max().double_value(&[]);
        let diff_other = (&quarter - img.rot90(-1, [2, 3]))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            diff < 1e-4 || diff_other < 1e-4,
            "quarter turn off by {diff} / {diff_other}"
        );
        let smooth = Tensor::from_slice(
            &(0..32 * 32)
                .map(|i| ((i % 32) as f32 * 0.1).sin() + (i / 32) as f32 * 0.05)
                .collect::<Vec<_>>(),
        )
        .reshape([1, 1, 32, 32]);
        let back = rotate(&rotate(&smooth, 5.0, 0.0), -5.0, 0.0);
        let centre = |t: &Tensor| t.narrow(2, 8, 16).narrow(3, 8, 16);
        let err = (centre(&back) - centre(&smooth))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 0.05, "rotate there and back differs by {err}");
    }

    /// Each view is mapped back to where it came from before averaging: the mirrors equal
    /// their definition, no TTA equals plain G.
    #[test]
    fn tta_views_are_mapped_back() {
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let x = Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu)).clamp(-1.0, 1.0);
        let err = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        let _guard = tch::no_grad_guard();
        let g_of = |x: &Tensor| g.forward_t(x, false);
        // The left-right mirror: the average of G(x) and flip(G(flip(x))).
        let flip = forward(&g, &x, Some(&Tta::default()));
        let expected = (g_of(&x) + g_of(&x.flip([3])).flip([3])) / 2.0;
        assert!(err(&flip, &expected) < 1e-6, "flip TTA differs");
        // Both mirrors: all four combinations, as nnU-Net mirrors along two axes.
        let both = forward(&g, &x, Some(&Tta::mirrors(true, true)));
        let expected = (g_of(&x)
            + g_of(&x.flip([3])).flip([3])
            + g_of(&x.flip([2])).flip([2])
            + g_of(&x.flip([2, 3])).flip([2, 3]))
            / 4.0;
        assert!(err(&both, &expected) < 1e-6, "x and y mirrors differ");
        // Only the anterior-posterior mirror.
        let y = forward(&g, &x, Some(&Tta::mirrors(false, true)));
        let expected = (g_of(&x) + g_of(&x.flip([2])).flip([2])) / 2.0;
        assert!(err(&y, &expected) < 1e-6, "y mirror differs");
        // No TTA is plain G, and the mirrors differ from it (G is not symmetric).
        assert!(err(&forward(&g, &x, None), &g_of(&x)) < 1e-7);
        assert!(err(&flip, &g_of(&x)) > 1e-4);
        // With rotations: G's range kept, the shape kept.
        let all = forward(&g, &x, Some(&Tta::with_rotations()));
        assert_eq!(all.size(), vec![2, 1, 32, 32]);
        assert!(all.abs().max().double_value(&[]) <= 1.0 + 1e-5);
        assert_eq!(
            [
                Tta::default(),
                Tta::mirrors(true, true),
                Tta::with_rotations()
            ]
            .map(|t| t.passes()),
            [2, 4, 4]
        );
    }

    /// `auto` mirrors along the axes training mirrored, and refuses where it cannot know.
    #[test]
    fn auto_mirrors_as_training_did() {
        let auto = TtaMode::Auto;
        assert_eq!(
            auto.views(Some([true, false])).unwrap(),
            Some(Tta::default())
        );
        assert_eq!(
            auto.views(Some([true, true])).unwrap(),
            Some(Tta::mirrors(true, true))
        );
        assert_eq!(auto.views(Some([false, false])).unwrap(), None);
        let err = format!("{:#}", auto.views(None).unwrap_err());
        assert!(err.contains("choose flip or none"), "{err}");
        assert_eq!(TtaMode::None.views(None).unwrap(), None);
        assert_eq!(
            TtaMode::Flip.views(Some([false, true])).unwrap(),
            Some(Tta::default())
        );
        assert_eq!(
            TtaMode::Full.views(None).unwrap(),
            Some(Tta::with_rotations())
        );
        // spelled in configs and state.json as on the command line
        for m in [TtaMode::None, TtaMode::Auto, TtaMode::Flip, TtaMode::Full] {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(serde_json::from_str::<TtaMode>(&json).unwrap(), m);
        }
        assert!(serde_json::from_str::<TtaMode>("\"mirror\"").is_err());
        assert_eq!("flip".parse::<TtaMode>(), Ok(TtaMode::Flip));
        assert!("mirror"
            .parse::<TtaMode>()
            .unwrap_err()
            .contains("none, auto, flip or full"));
    }

    /// `predict` without `--tta` runs what each checkpoint records (none for one that records
    /// nothing); `--tta` overrides it; an ensemble recording different views is refused with
    /// every model named.
    #[test]
    fn without_tta_the_checkpoints_recorded_views_are_run() {
        use crate::tiles::tests::{loaded, recorded};
        use crate::tiles::InferenceSettings;
        let with = |tta| InferenceSettings {
            tta,
            ..InferenceSettings::default()
        };
        // recorded `auto`, trained with left-right mirrors: the mirror
        let auto = || recorded("runs/a", Some(32), Some(with(TtaMode::Auto)));
        assert_eq!(resolve(None, &[auto()]).unwrap(), Some(Tta::default()));
        assert_eq!(resolve(Some(TtaMode::None), &[auto()]).unwrap(), None);
        assert_eq!(
            resolve(Some(TtaMode::Full), &[auto()]).unwrap(),
            Some(Tta::with_rotations())
        );
        // a checkpoint from before the key: one pass
        assert_eq!(
            resolve(None, &[loaded("runs/old", Some(32))]).unwrap(),
            None
        );
        // recorded none and auto: refused unless told
        let mixed = || [auto(), loaded("runs/old", Some(32))];
        let e = resolve(None, &mixed()).unwrap_err().to_string();
        assert!(
            e.contains("runs/a tta auto, trained mirroring left-right")
                && e.contains("runs/old tta none (not recorded)")
                && e.contains("--tta"),
            "{e}"
        );
        // spelled differently, the same views: accepted
        let flip = recorded("runs/f", Some(32), Some(with(TtaMode::Flip)));
        assert_eq!(
            resolve(None, &[auto(), flip]).unwrap(),
            Some(Tta::default())
        );
        assert_eq!(
            resolve(Some(TtaMode::Flip), &mixed()).unwrap(),
            Some(Tta::default())
        );
        // `auto` for models trained with different mirrors: refused, each named
        let mut both = auto();
        both.checkpoint = "runs/b".into();
        both.train_mirrors = Some([true, true]);
        let e = resolve(None, &[auto(), both]).unwrap_err().to_string();
        assert!(
            e.contains("runs/a tta auto, trained mirroring left-right,")
                && e.contains(
                    "runs/b tta auto, trained mirroring left-right and anterior-posterior"
                ),
            "{e}"
        );
        // `auto` without a record of training's mirrors: refused, the model named
        let mut unknown = auto();
        unknown.train_mirrors = None;
        let e = format!("{:#}", resolve(None, &[unknown]).unwrap_err());
        assert!(
            e.contains("runs/a") && e.contains("choose flip or none"),
            "{e}"
        );
    }
}
