//! Validation on whole volumes, in HU, beside the NCCT-as-prediction baseline; and the sample
//! grids.
//!
//! Each validation case is translated slice by slice by G in eval mode with
//! [`infer::translate`], on the tiles of `[inference]` ([`infer::tiles`]; the training crop by
//! default), the code and the tiles `ncct2ctpa predict` runs too (so a validation score is the
//! score of what predict would write for that case; the sample grids show whole slices), and scored with [`metrics::score_regions`] inside the body and lung masks: MAE (HU), PSNR
//! (data range of the metrics' HU window, [-1024, 3071] = 4095) and SSIM (2D, per axial slice,
//! like the 2D network is trained). The same scores of the NCCT itself (the baseline every
//! paper reports beside the model) are computed once.

use crate::contrast::{contrast_region_volume, ContrastConfig};
use crate::nets::Nets;
use anyhow::Context;
use dataset::manifest::{IntensityWindow, Split};
use dataset::store::{CaseVolumes, PreparedDataset};
use infer::tensors::tensor_to_array;
use infer::translate::{translate_slices, SliceFrame};
use metrics::{score_regions, RegionScores, ScoreConfig, SsimMode};
use model::generator::Generator;
use model::warp::{warp, warp_through_plane, WarpMethod};
use ndarray::{s, Array2, Array3, ArrayView3};
use serde::Serialize;
use std::path::Path;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};
use util::canvas::{Canvas, BLACK, WHITE};
use volume::register::demons::{register_demons, DemonsConfig};

/// Mean scores over the validation cases (`None` where no case had voxels in the region).
///
/// The plain fields score against the prepared CTPA, which moved against the NCCT between
/// the scans: a model is partly scored on how well it guesses that motion (on a 15 mm phantom
/// the NCCT itself scores ~110 HU body MAE there). The `_reg` fields score against the CTPA
/// warped onto the NCCT by the classical deformable registration
/// ([`volume::register::demons`], computed once when validation loads): the prediction lies
/// on the NCCT's anatomy, so these reward the contrast change, not the motion, and they are
/// computable on real data, where no aligned truth exists. `None` with
/// `log.registered_validation = false`.
///
/// `mae_contrast` scores inside the case's contrast region (`[contrast]`'s motion-tolerant
/// region: where the CTPA, as it lies, is brighter by more than `threshold_hu` than the
/// brightest NCCT voxel within `motion_px` in-plane, grown by `motion_px`; computed once when
/// validation loads) against the CTPA as it lies: the enhancement, which the body and lung
/// scores barely see (on the #16 benchmark a model that returned its input unchanged scored an
/// ordinary body MAE but the worst `mae_contrast` of 36 runs; it ranked the runs' artery MAE
/// with a Spearman correlation of +0.62 where `mae_body_reg` reached +0.31).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    pub mae_body: Option<f64>,
    pub mae_lung: Option<f64>,
    pub psnr_body: Option<f64>,
    pub psnr_lung: Option<f64>,
    pub ssim_body: Option<f64>,
    pub ssim_lung: Option<f64>,
    pub mae_body_reg: Option<f64>,
    pub mae_lung_reg: Option<f64>,
    pub psnr_body_reg: Option<f64>,
    pub psnr_lung_reg: Option<f64>,
    pub ssim_body_reg: Option<f64>,
    pub ssim_lung_reg: Option<f64>,
    pub mae_contrast: Option<f64>,
}

/// The per-case scores [`Scores`] averages: `[body, lung, contrast region]` against the
/// prepared CTPA and, when validation registers, `[body, lung]` against the registered one.
type CaseScores = ([RegionScores; 3], Option<[RegionScores; 2]>);

impl Scores {
    /// `(name, value)` pairs in a fixed order, for logs and tables.
    pub fn fields(&self) -> [(&'static str, Option<f64>); 13] {
        [
            ("mae_body", self.mae_body),
            ("mae_lung", self.mae_lung),
            ("psnr_body", self.psnr_body),
            ("psnr_lung", self.psnr_lung),
            ("ssim_body", self.ssim_body),
            ("ssim_lung", self.ssim_lung),
            ("mae_body_reg", self.mae_body_reg),
            ("mae_lung_reg", self.mae_lung_reg),
            ("psnr_body_reg", self.psnr_body_reg),
            ("psnr_lung_reg", self.psnr_lung_reg),
            ("ssim_body_reg", self.ssim_body_reg),
            ("ssim_lung_reg", self.ssim_lung_reg),
            ("mae_contrast", self.mae_contrast),
        ]
    }

    /// The value of the field called `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v)
    }

    /// Means of per-case scores.
    fn mean_of(cases: &[CaseScores]) -> Self {
        let mean = |f: &dyn Fn(&CaseScores) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = cases.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let reg = |c: &CaseScores, r: usize| c.1.map(|s| s[r]);
        Self {
            mae_body: mean(&|c| c.0[0].mae),
            mae_lung: mean(&|c| c.0[1].mae),
            psnr_body: mean(&|c| c.0[0].psnr),
            psnr_lung: mean(&|c| c.0[1].psnr),
            ssim_body: mean(&|c| c.0[0].ssim),
            ssim_lung: mean(&|c| c.0[1].ssim),
            mae_body_reg: mean(&|c| reg(c, 0)?.mae),
            mae_lung_reg: mean(&|c| reg(c, 1)?.mae),
            psnr_body_reg: mean(&|c| reg(c, 0)?.psnr),
            psnr_lung_reg: mean(&|c| reg(c, 1)?.psnr),
            ssim_body_reg: mean(&|c| reg(c, 0)?.ssim),
            ssim_lung_reg: mean(&|c| reg(c, 1)?.ssim),
            mae_contrast: mean(&|c| c.0[2].mae),
        }
    }
}

/// Validation data and settings, loaded once per run.
#[derive(Debug)]
pub struct Validator {
    pub cases: Vec<CaseVolumes>,
    /// Per case, its CTPA registered onto its NCCT (HU), when validation registers.
    pub registered: Vec<Option<Array3<f32>>>,
    /// Per case, its contrast region (0/1, `[z, y, x]`), where `mae_contrast` scores.
    pub contrast: Vec<Array3<u8>>,
    window: IntensityWindow,
    /// Size multiple of the sample grids' tensors, which R reads too (G's own multiple is
    /// taken from G when translating).
    multiple: usize,
    score_cfg: ScoreConfig,
    /// The NCCT-as-prediction scores (fixed for the run).
    pub baseline: Scores,
    /// Slices per forward pass.
    pub batch_slices: usize,
    /// Tiles G runs on (`[inference]`, [`infer::tiles`]); `None`: whole slices.
    pub tiling: Option<infer::tiles::Tiling>,
    /// Test-time augmentation within each tile (`[inference] tta`, [`infer::tta`]); `None`:
    /// one pass.
    pub tta: Option<infer::tta::Tta>,
}

impl Validator {
    /// Loads the validation split (at most `max_cases` cases, 0 = all), registers each CTPA
    /// onto its NCCT when `register` is set, finds each case's contrast region with
    /// `contrast`'s threshold and motion, and scores the baseline. Falls back to the test
    /// split, then the training split, when the dataset has no validation cases (a warning
    /// says so).
    pub fn load(
        ds: &PreparedDataset,
        window: IntensityWindow,
        multiple: usize,
        max_cases: usize,
        register: bool,
        contrast: &ContrastConfig,
    ) -> anyhow::Result<Self> {
        let mut split = Split::Val;
        for candidate in [Split::Val, Split::Test, Split::Train] {
            if !ds.cases(candidate).is_empty() {
                split = candidate;
                break;
            }
        }
        if split != Split::Val {
            tracing::warn!(
                "the prepared dataset has no validation cases: validating on the {split:?} split \
                 (scores will be optimistic)"
            );
        }
        let mut names: Vec<String> = ds
            .cases(split)
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        if max_cases > 0 {
            names.truncate(max_cases);
        }
        let mut cases = Vec::with_capacity(names.len());
        for name in names {
            let case = ds
                .volume(&name)
                .with_context(|| format!("loading validation case {name}"))?;
            cases.push(case);
        }
        // the one SSIM definition of validation and `evaluate` (metrics::SsimMode's default)
        let score_cfg = ScoreConfig::default();
        debug_assert_eq!(score_cfg.ssim_mode, SsimMode::Axial);
        let registered = cases
            .iter()
            .map(|c| register.then(|| register_target(c)).transpose())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let regions = cases
            .iter()
            .map(|c| {
                let r = contrast_region_volume(
                    c.ncct.data.view(),
                    c.ctpa.data.view(),
                    c.body.data.view(),
                    contrast.threshold_hu as f32,
                    contrast.motion_px,
                )
                .with_context(|| format!("validation case {}'s contrast region", c.name))?;
                let count = |m: &Array3<u8>| m.iter().filter(|&&v| v != 0).count();
                let voxels = count(&r);
                tracing::info!(
                    "validation case {}: contrast region {voxels} voxels ({:.2} % of the body)",
                    c.name,
                    100.0 * voxels as f64 / count(&c.body.data).max(1) as f64
                );
                Ok(r)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let per_case: Vec<CaseScores> = cases
            .iter()
            .zip(&registered)
            .zip(&regions)
            .map(|((c, r), region)| {
                score_case(c.ncct.data.view(), c, r.as_ref(), region, &score_cfg)
            })
            .collect::<anyhow::Result<_>>()?;
        let baseline = Scores::mean_of(&per_case);
        tracing::debug!(cases = cases.len(), ?baseline, "validation set loaded");
        Ok(Self {
            cases,
            registered,
            contrast: regions,
            window,
            multiple: multiple.max(1),
            score_cfg,
            baseline,
            batch_slices: 8,
            tiling: None,
            tta: None,
        })
    }

    /// Translates every validation case with G and scores it.
    pub fn run(&self, nets: &Nets, device: Device) -> anyhow::Result<Scores> {
        let mut per_case = Vec::with_capacity(self.cases.len());
        for ((c, r), region) in self.cases.iter().zip(&self.registered).zip(&self.contrast) {
            let pred = self.translate(nets.inference_g(), &c.ncct.data, device)?;
            per_case.push(score_case(
                pred.view(),
                c,
                r.as_ref(),
                region,
                &self.score_cfg,
            )?);
        }
        Ok(Scores::mean_of(&per_case))
    }

    /// G over a `[z, y, x]` HU volume, slice by slice, in eval mode, in batches of
    /// [`Self::batch_slices`], on [`Self::tiling`]'s tiles with [`Self::tta`]'s views; returns
    /// HU. Bit for bit what `infer`'s `Translator` returns for the same G, window, tiles and
    /// views without resampling or reduced precision.
    pub fn translate(
        &self,
        g: &Generator,
        ncct: &Array3<f32>,
        device: Device,
    ) -> anyhow::Result<Array3<f32>> {
        let frame = SliceFrame::for_generator(g.config(), self.window)?;
        let _guard = tch::no_grad_guard();
        translate_slices(
            &frame,
            ncct.view(),
            self.batch_slices,
            device,
            |x| {
                Ok(infer::predict::forward_slices(
                    g,
                    x,
                    self.tiling.as_ref(),
                    self.tta.as_ref(),
                ))
            },
            |_| {},
        )
    }

    /// Draws the sample grid for `slices` (indices into the first validation case's z) to
    /// `path`: one row per slice, columns NCCT | G(x) | warp(G(x)) | CTPA | |G(x) - CTPA| |
    /// |flow|. Images use a soft-tissue-and-contrast display window [-200, 600] HU, the error
    /// [0, 300] HU, the in-plane flow [0, max] pixels with the max printed (with R across
    /// slices also the sample's mean |dz| in slices; warp(G(x)) is then the through-plane
    /// warp of G's outputs for the slice and its neighbours).
    pub fn sample_grid(
        &self,
        nets: &Nets,
        device: Device,
        step: u64,
        path: &Path,
    ) -> anyhow::Result<()> {
        let Some(case) = self.cases.first() else {
            return Ok(());
        };
        let _guard = tch::no_grad_guard();
        let zs = sample_slices(case);
        let (_, ny, nx) = case.ncct.data.dim();
        // G's frame, padded for R as well; the CTPA is R's fixed image, one slice per sample.
        let frame = SliceFrame::for_generator(nets.inference_g().config(), self.window)?
            .padded_for(self.multiple);
        let x = frame.input(case.ncct.data.view(), &zs, device)?;
        let y = frame
            .single_channel()
            .input(case.ctpa.data.view(), &zs, device)?;
        let g = nets.inference_g();
        let fake = g.forward_t(&x, false);
        let (registered, flow_mag, dz) = match &nets.r {
            Some(r) => {
                let (flow, registered) = if r.config().through_plane {
                    // G's outputs for the slices below and above too (clamped at the ends)
                    let nz = case.ncct.data.dim().0;
                    let at = |dz: isize| -> anyhow::Result<Tensor> {
                        let zs: Vec<usize> = zs
                            .iter()
                            .map(|&z| (z as isize + dz).clamp(0, nz as isize - 1) as usize)
                            .collect();
                        Ok(g.forward_t(&frame.input(case.ncct.data.view(), &zs, device)?, false))
                    };
                    let planes = Tensor::cat(&[at(-1)?, fake.shallow_clone(), at(1)?], 1);
                    let flow = r.forward_t(&planes, &y, false);
                    let registered = warp_through_plane(WarpMethod::Exact, &planes, &flow);
                    (flow, registered)
                } else {
                    let flow = r.forward_t(&fake, &y, false);
                    let registered = warp(&fake, &flow);
                    (flow, registered)
                };
                // the in-plane displacement's length, and across slices each sample's mean |dz|
                let mag = flow
                    .narrow(1, 0, 2)
                    .square()
                    .sum_dim_intlist(1, true, Kind::Float)
                    .sqrt();
                let dz = match r.config().through_plane {
                    true => Some(tensor_to_array(&frame.crop(
                        &flow.narrow(1, 2, 1).abs(),
                        ny,
                        nx,
                    ))?),
                    false => None,
                };
                (
                    registered,
                    Some(tensor_to_array(&frame.crop(&mag, ny, nx))?),
                    dz,
                )
            }
            None => (fake.shallow_clone(), None, None),
        };
        // [samples, height, width] in HU
        let fake_hu = frame.output_hu(&fake, ny, nx)?;
        let reg_hu = frame.output_hu(&registered, ny, nx)?;

        let (tile_w, tile_h, label_h) = (nx, ny, 14usize);
        let titles = [
            "NCCT",
            "G(x)",
            "WARP(G(x))",
            "CTPA",
            "|G(x)-CTPA|",
            "|FLOW|",
        ];
        let header = 16usize;
        let mut canvas = Canvas::new(
            6 * tile_w + 7 * 2,
            header + zs.len() * (tile_h + label_h) + 2,
            WHITE,
        );
        canvas.text(2, 4, &format!("STEP {step}  CASE {}", case.name), BLACK, 1);
        let (lo, hi) = (-200.0, 600.0);
        for (row, &z) in zs.iter().enumerate() {
            let y0 = (header + row * (tile_h + label_h)) as i64;
            let (ncct, ctpa) = (
                case.ncct.data.slice(s![z, .., ..]),
                case.ctpa.data.slice(s![z, .., ..]),
            );
            let err: Array2<f32> = (&fake_hu.slice(s![row, .., ..]) - &ctpa).mapv(f32::abs);
            let flow = flow_mag
                .as_ref()
                .map(|m| m.slice(s![row, 0, .., ..]).to_owned());
            let fmax = flow
                .as_ref()
                .map_or(0.0, |f| f.iter().copied().fold(0.0f32, f32::max));
            let tiles = [
                (ncct, lo, hi),
                (fake_hu.slice(s![row, .., ..]), lo, hi),
                (reg_hu.slice(s![row, .., ..]), lo, hi),
                (ctpa, lo, hi),
                (err.view(), 0.0, 300.0),
            ];
            for (col, (img, a, b)) in tiles.iter().enumerate() {
                let x0 = (2 + col * (tile_w + 2)) as i64;
                canvas.gray_tile(x0, y0 + label_h as i64, *img, *a, *b);
            }
            let x5 = (2 + 5 * (tile_w + 2)) as i64;
            match &flow {
                Some(f) => canvas.gray_tile(x5, y0 + label_h as i64, f.view(), 0.0, fmax.max(1e-3)),
                None => canvas.text(x5 + 4, y0 + label_h as i64 + 4, "NO R", BLACK, 1),
            }
            for (col, t) in titles.iter().enumerate() {
                let dz_mean = dz.as_ref().and_then(|d| d.slice(s![row, 0, .., ..]).mean());
                let label = if col == 5 && flow.is_some() {
                    match dz_mean {
                        Some(m) => format!("|FLOW| {fmax:.1}PX DZ {m:.2}"),
                        None => format!("|FLOW| MAX {fmax:.1}PX"),
                    }
                } else if col == 0 {
                    format!("{t} Z={z}")
                } else {
                    (*t).to_owned()
                };
                canvas.text((2 + col * (tile_w + 2)) as i64, y0 + 3, &label, BLACK, 1);
            }
        }
        Ok(canvas.save_png(path)?)
    }
}

/// Two slices of a case to show: the lung slices at 40 % and 60 % of the lung's extent, or
/// the middle slice if the case has no lung.
fn sample_slices(case: &CaseVolumes) -> Vec<usize> {
    let nz = case.lung.data.dim().0;
    let with_lung: Vec<usize> = (0..nz)
        .filter(|&z| case.lung.data.slice(s![z, .., ..]).iter().any(|&v| v != 0))
        .collect();
    match (with_lung.first(), with_lung.last()) {
        (Some(&a), Some(&b)) if b > a => {
            let pick = |f: f64| a + ((b - a) as f64 * f).round() as usize;
            let (p, q) = (pick(0.4), pick(0.6));
            if p == q {
                vec![p]
            } else {
                vec![p, q]
            }
        }
        _ => vec![nz / 2],
    }
}

/// The case's CTPA registered onto its NCCT (demons, [`DemonsConfig::for_spacing`]).
fn register_target(c: &CaseVolumes) -> anyhow::Result<Array3<f32>> {
    let t = std::time::Instant::now();
    let cfg = DemonsConfig::for_spacing(c.ncct.geometry.spacing);
    let r = register_demons(&c.ncct, &c.ctpa, &cfg).with_context(|| {
        format!(
            "registering validation case {}'s CTPA onto its NCCT",
            c.name
        )
    })?;
    tracing::info!(
        "validation case {}: CTPA registered onto the NCCT (demons, shrink {:?}): RMS difference \
         {:.1} -> {:.1} HU below 100 HU, largest displacement {:.1} mm, {:.1} s",
        c.name,
        cfg.shrink_factors,
        r.rms_before,
        r.rms_after,
        r.field.max_mm(c.ncct.geometry.spacing),
        t.elapsed().as_secs_f64()
    );
    Ok(r.warped.data)
}

/// `[body, lung, contrast region]` scores of `pred` (HU) against the case's CTPA, and
/// `[body, lung]` against `registered`.
fn score_case(
    pred: ArrayView3<'_, f32>,
    c: &CaseVolumes,
    registered: Option<&Array3<f32>>,
    contrast: &Array3<u8>,
    cfg: &ScoreConfig,
) -> anyhow::Result<CaseScores> {
    let masks = [c.body.data.view(), c.lung.data.view(), contrast.view()];
    let score = |target: ArrayView3<'_, f32>, masks: &[ArrayView3<'_, u8>]| {
        score_regions(pred, target, masks, cfg)
            .with_context(|| format!("scoring validation case {}", c.name))
    };
    let plain = score(c.ctpa.data.view(), &masks)?;
    let reg = registered
        .map(|r| score(r.view(), &masks[..2]).map(|s| [s[0], s[1]]))
        .transpose()?;
    Ok(([plain[0], plain[1], plain[2]], reg))
}
