//! Volume inference: an NCCT volume in HU in, a synthetic CTPA volume in HU out, on exactly
//! the input's grid.
//!
//! The generator is a 2D network, so a volume is translated axial slice by axial slice, in
//! batches:
//! 1. (optional) the volume is resampled in-plane to the spacing the model was trained at, when
//!    that differs from the input's by more than [`SPACING_TOLERANCE`];
//! 2. each slice is clipped to the model's HU window and mapped to [-1, 1]; a model with
//!    `2k + 1` input channels sees the slices `z - k ..= z + k` (clamped at the ends);
//! 3. slices are padded to a multiple of `2^depth` with -1 (air, the background of a CT) so
//!    that any input size works, run through G in eval mode without gradients, cropped back;
//! 4. the output is mapped back to HU and, if step 1 resampled, resampled back to the input
//!    grid. The result carries the input's geometry, so it overlays the NCCT in any viewer.
//!
//! Steps 2 to 4 (less the resampling) are [`crate::translate`], which training's validation
//! runs too: a validation score is the score of what predict writes, bit for bit.
//!
//! Reduced precision ([`Precision`]): G's forward passes run under libtorch's autocast in
//! bf16 or f16 (convolutions and matrix products in the reduced dtype, normalisations and
//! reductions in fp32; weights stay fp32), and the output is cast back to fp32 before the HU
//! mapping. bf16 runs on the CPU and CUDA; f16 only on CUDA (the CPU has no fast f16
//! convolutions). The HU error this costs is measured by `examples/precision_error.rs`:
//! random tiny-preset G, 8 x 256 x 256 volume: max 5.2 HU, mean 0.26 HU, p99 1.6 HU. On the
//! 2-core AVX2 CPU here bf16 is ~15x *slower* than fp32 (oneDNN has no native bf16
//! convolutions without AVX512-BF16/AMX), so it is for GPUs and bf16-capable CPUs, and warns
//! otherwise.
//!
//! Tiles ([`crate::tiles`], `PredictOptions::tiles`): G runs on overlapping square tiles of
//! the padded slices, blended with nnU-Net's Gaussian, instead of on whole slices, so a G
//! trained on crops sees at inference the field of view it was trained on; test-time
//! augmentation then runs within each tile.
//!
//! Test-time augmentation ([`crate::tta`]) runs G on mirrored (and rotated) copies of each
//! batch, maps each prediction back and averages them.

use crate::translate::{translate_slices, SliceFrame};
pub use crate::tta::Tta;
use anyhow::{bail, Context, Result};
use dataset::manifest::IntensityWindow;
pub use model::precision::Precision;
use ndarray::Array3;
use tch::{Device, Tensor};
use volume::resample::{resample, Grid, Interpolation};
use volume::Volume;

use model::generator::Generator;
use torchext::{AutocastDevice, AutocastGuard};

/// The largest grid an input is resampled to (4 GiB of f32): far above any CT
/// (512 x 512 x 2000 is 0.5 G voxels), far below what an absurd `--model-spacing` asks for.
pub const MAX_RESAMPLED_VOXELS: usize = 1 << 30;

/// Relative in-plane spacing difference under which the input is used as is.
pub const SPACING_TOLERANCE: f64 = 0.05;

/// How to run the generator over a volume.
#[derive(Debug, Clone, Default)]
pub struct PredictOptions {
    /// Slices per forward pass (0 is taken as 1).
    pub batch_size: usize,
    /// In-plane spacing `(x, y)` in mm the model was trained at; `None` uses the input as is.
    pub model_spacing_xy: Option<[f64; 2]>,
    /// Test-time augmentation; `None` runs G once per slice.
    pub tta: Option<Tta>,
    /// Precision of G's forward passes. Default: fp32.
    pub precision: Precision,
    /// Sliding-window inference on tiles ([`crate::tiles`]); `None` runs G on whole slices.
    pub tiles: Option<crate::tiles::Tiling>,
}

/// Whether `precision` runs on `device` at inference: f16 needs CUDA (the CPU has no fast
/// f16 convolutions); bf16 runs anywhere.
pub fn check_precision(precision: Precision, device: Device) -> Result<()> {
    if precision == Precision::F16 && !device.is_cuda() {
        bail!(
            "precision f16 needs a CUDA device (running on {device:?}); use bf16 or fp32 on the \
             CPU"
        );
    }
    Ok(())
}

impl PredictOptions {
    /// Batches of 8 slices, no resampling, no TTA.
    pub fn new() -> Self {
        Self {
            batch_size: 8,
            ..Self::default()
        }
    }
}

/// A generator ready for inference: its weights, the HU window it was trained with and the
/// device it runs on.
pub struct Translator<'a> {
    pub generator: &'a Generator,
    pub window: IntensityWindow,
    pub device: Device,
}

impl std::fmt::Debug for Translator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("window", &self.window)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Translator<'_> {
    /// Translates a whole NCCT volume to synthetic CTPA (HU) on the input's grid.
    /// `on_slices(done)` is called after each batch (for progress bars).
    pub fn translate_volume(
        &self,
        ncct: &Volume,
        opts: &PredictOptions,
        mut on_slices: impl FnMut(usize),
    ) -> Result<Volume> {
        check_precision(opts.precision, self.device)?;
        if opts.precision == Precision::Bf16 && !self.device.is_cuda() {
            // Measured on an AVX2 CPU (no AVX512-BF16/AMX): 15x slower than fp32.
            tracing::warn!(
                "bf16 on the CPU is much slower than fp32 unless the CPU has native bf16 \
                 (AVX512-BF16 or AMX); it only saves memory"
            );
        }
        let input_grid = Grid::of(ncct);
        let model_grid = match opts.model_spacing_xy {
            Some(xy) if needs_resampling(ncct.geometry.spacing, xy) => {
                let spacing = [xy[0], xy[1], ncct.geometry.spacing[2]];
                tracing::info!(
                    from = ?ncct.geometry.spacing, to = ?spacing,
                    "resampling the input in-plane to the model's training spacing"
                );
                let grid = Grid::with_spacing(&input_grid, spacing);
                let voxels = grid.size_xyz.iter().product::<usize>();
                if voxels > MAX_RESAMPLED_VOXELS {
                    bail!(
                        "resampling to the model spacing {xy:?} mm would make a {:?} grid ({voxels} \
                         voxels, above {MAX_RESAMPLED_VOXELS}): check --model-spacing (mm, the \
                         spacing the model was trained at)",
                        grid.size_xyz
                    );
                }
                Some(grid)
            }
            _ => None,
        };
        let working = match &model_grid {
            Some(grid) => resample(ncct, grid, None, Interpolation::Linear, -1024.0)
                .context("resampling the input to the model's spacing")?,
            None => ncct.clone(),
        };
        let data = self.translate_slices(&working.data, opts, &mut on_slices)?;
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            bail!(
                "the prediction holds {bad} non-finite voxel(s) (NaN or inf: the model's weights \
                 or the input hold some); nothing was written"
            );
        }
        let out = Volume {
            data,
            geometry: working.geometry,
        };
        match model_grid {
            Some(_) => resample(&out, &input_grid, None, Interpolation::Linear, -1024.0)
                .context("resampling the prediction back to the input grid"),
            None => Ok(out),
        }
    }

    /// The mean of several generators' predictions of one volume: an ensemble (several
    /// seeds, or folds, as nnU-Net averages its five), each member run by
    /// [`Self::translate_volume`] with the same `opts`, their HU averaged voxel by voxel (so
    /// members may differ in HU window, input slices or size). `on_slices` counts every
    /// member's slices. One member is [`Self::translate_volume`] itself.
    pub fn translate_mean(
        members: &[Translator<'_>],
        ncct: &Volume,
        opts: &PredictOptions,
        mut on_slices: impl FnMut(usize),
    ) -> Result<Volume> {
        let Some((first, rest)) = members.split_first() else {
            bail!("an ensemble needs at least one model");
        };
        let mut sum = first.translate_volume(ncct, opts, &mut on_slices)?;
        for (i, member) in rest.iter().enumerate() {
            let out = member
                .translate_volume(ncct, opts, &mut on_slices)
                .with_context(|| format!("model {} of the ensemble", i + 2))?;
            sum.data += &out.data;
        }
        if !rest.is_empty() {
            sum.data /= members.len() as f32;
        }
        Ok(sum)
    }

    /// Translates every axial slice of `hu` (`[z, y, x]`, HU) and returns HU, through
    /// [`crate::translate`] (the code training's validation runs), with `opts`' precision,
    /// tiles and test-time augmentation (within each tile) as the forward pass.
    fn translate_slices(
        &self,
        hu: &Array3<f32>,
        opts: &PredictOptions,
        on_slices: &mut impl FnMut(usize),
    ) -> Result<Array3<f32>> {
        let frame = SliceFrame::for_generator(self.generator.config(), self.window)?;
        if let Some(t) = &opts.tiles {
            // a tiling built for another model (an ensemble member of another depth)
            crate::tiles::Tiling::new(t.size, t.step, frame.multiple())
                .context("tiled inference")?;
        }
        let views =
            |x: &Tensor| forward_slices(self.generator, x, opts.tiles.as_ref(), opts.tta.as_ref());
        translate_slices(
            &frame,
            hu.view(),
            opts.batch_size.max(1),
            self.device,
            // [batch, in_channels, padded height, padded width] -> [batch, 1, ..]
            |x| {
                tch::no_grad(|| match opts.precision.autocast_kind() {
                    None => Ok(views(x)),
                    Some(kind) => {
                        let _autocast = AutocastGuard::new(AutocastDevice::of(self.device), kind)
                            .context("turning on autocast")?;
                        Ok(views(x))
                    }
                })
            },
            on_slices,
        )
    }
}

/// G over a batch of padded slices as inference runs it: on `tiles`, blended
/// ([`crate::tiles::forward_tiled`]), or on the whole slices, each averaged over `tta`'s views
/// ([`crate::tta::forward`]). What `predict` and training's validation run.
///
/// # Shapes
/// `x`: [batch, in_channels, height, width] -> [batch, 1, height, width]
pub fn forward_slices(
    g: &Generator,
    x: &Tensor,
    tiles: Option<&crate::tiles::Tiling>,
    tta: Option<&Tta>,
) -> Tensor {
    match tiles {
        Some(t) => crate::tiles::forward_tiled(x, t, |tile| crate::tta::forward(g, tile, tta)),
        None => crate::tta::forward(g, x, tta),
    }
}

fn needs_resampling(spacing: [f64; 3], model_xy: [f64; 2]) -> bool {
    (0..2).any(|i| ((spacing[i] - model_xy[i]) / model_xy[i]).abs() > SPACING_TOLERANCE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::ModelConfig;
    use tch::nn::ModuleT;
    use tch::nn::VarStore;
    use volume::Geometry;

    pub(super) fn tiny_generator(vs: &VarStore) -> Generator {
        let cfg = ModelConfig::preset("tiny").expect("tiny preset");
        Generator::new(&vs.root().sub("g"), &cfg.generator)
    }

    /// A translator on the CPU with the default HU window.
    pub(super) fn cpu_translator(generator: &Generator) -> Translator<'_> {
        Translator {
            generator,
            window: IntensityWindow::default(),
            device: Device::Cpu,
        }
    }

    /// Padding must not change what the network computes in the interior: a slice whose size
    /// is already a multiple, translated through `translate_volume`, equals G applied directly.
    #[test]
    fn translate_matches_direct_forward_on_multiple_sizes() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let m = g.config().size_multiple() as usize;
        let (nz, ny, nx) = (3, 2 * m, 3 * m);
        let hu = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            -1000.0 + 40.0 * (z + y) as f32 + 10.0 * x as f32
        });
        let window = IntensityWindow::default();
        let t = Translator {
            generator: &g,
            window,
            device: Device::Cpu,
        };
        let vol = Volume::new(hu.clone(), Geometry::identity([0.8, 0.8, 2.0])).unwrap();
        let mut seen = 0;
        let out = t
            .translate_volume(
                &vol,
                &PredictOptions {
                    batch_size: 2,
                    ..PredictOptions::new()
                },
                |n| seen += n,
            )
            .unwrap();
        assert_eq!(seen, nz);
        assert_eq!(out.geometry, vol.geometry);
        let x = Tensor::from_slice(hu.mapv(|v| window.normalize(v)).as_slice().unwrap())
            .reshape([nz as i64, 1, ny as i64, nx as i64]);
        let y = tch::no_grad(|| g.forward_t(&x, false)).view([-1]);
        let direct: Vec<f32> = Vec::try_from(&y).unwrap();
        for (a, b) in out.data.iter().zip(direct.iter()) {
            let b = window.denormalize(*b);
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    /// Tiles run G on parts of the padded slice and blend them ([`crate::tiles`]): a tile
    /// as large as the slice is the whole-slice prediction, bit for bit; smaller tiles give
    /// what blending G's outputs on those tiles by hand gives, which an instance-norm G makes
    /// differ from the whole slice.
    #[test]
    fn tiles_blend_gs_outputs_on_the_padded_slice() {
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        // weights further from pix2pix's small init: outputs that vary across the slice
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_(&(v.randn_like() * 0.05));
            }
        });
        let m = g.config().size_multiple() as usize;
        let (nz, ny, nx) = (2, 6 * m - 3, 4 * m);
        let hu = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            -900.0 + 30.0 * ((y * 7 + x * 3 + z) % 50) as f32
        });
        let vol = Volume::new(hu.clone(), Geometry::identity([0.8, 0.8, 2.0])).unwrap();
        let t = cpu_translator(&g);
        let run = |tiles| {
            let opts = PredictOptions {
                tiles,
                ..PredictOptions::new()
            };
            t.translate_volume(&vol, &opts, |_| {}).unwrap().data
        };
        let whole = run(None);
        let big = crate::tiles::Tiling::new(6 * m, 0.5, m).unwrap();
        assert_eq!(run(Some(big)), whole);
        let small = crate::tiles::Tiling::new(2 * m, 0.5, m).unwrap();
        let tiled = run(Some(small));
        let frame = SliceFrame::for_generator(g.config(), IntensityWindow::default()).unwrap();
        let x = frame.input(hu.view(), &[0, 1], Device::Cpu).unwrap();
        let by_hand = tch::no_grad(|| {
            crate::tiles::forward_tiled(&x, &small, |tile| g.forward_t(tile, false))
        });
        let by_hand = frame.output_hu(&by_hand, ny, nx).unwrap();
        let diff = (&tiled - &by_hand)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(
            diff < 1e-3,
            "tiled translation against the blend by hand: {diff} HU"
        );
        let off = (&tiled - &whole)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(
            off > 1.0,
            "tiles of an instance-norm G equal the whole slice ({off} HU)"
        );
        // a tiling the generator cannot run is refused with the reason
        let bad = crate::tiles::Tiling {
            size: m + 1,
            step: 0.5,
        };
        let e = t
            .translate_volume(
                &vol,
                &PredictOptions {
                    tiles: Some(bad),
                    ..PredictOptions::new()
                },
                |_| {},
            )
            .unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("multiple of {m}")),
            "{e:#}"
        );
    }

    /// Odd sizes are padded and cropped back: the output has the input's shape and HU range.
    #[test]
    fn odd_sizes_are_padded_and_cropped_back() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let hu = Array3::from_elem((2, 21, 13), 40.0f32);
        let vol = Volume::new(hu, Geometry::identity([1.0; 3])).unwrap();
        let t = cpu_translator(&g);
        let out = t
            .translate_volume(&vol, &PredictOptions::new(), |_| {})
            .unwrap();
        assert_eq!(out.data.dim(), (2, 21, 13));
        let w = IntensityWindow::default();
        assert!(out.data.iter().all(|v| *v >= w.min && *v <= w.max));
    }

    #[test]
    fn resampling_decision_uses_relative_tolerance() {
        assert!(!needs_resampling([0.8, 0.8, 2.0], [0.81, 0.79]));
        assert!(needs_resampling([0.6, 0.6, 2.0], [0.8, 0.8]));
    }
}

#[cfg(test)]
mod precision_tests {
    use super::tests::{cpu_translator, tiny_generator};
    use super::*;
    use tch::nn::VarStore;
    use volume::Geometry;

    fn phantom() -> Volume {
        // A body-like disc of soft tissue with a denser core, in air.
        let hu = Array3::from_shape_fn((3, 32, 32), |(z, y, x)| {
            let r = ((y as f32 - 16.0).powi(2) + (x as f32 - 16.0).powi(2)).sqrt();
            if r < 6.0 {
                300.0 + 20.0 * z as f32
            } else if r < 13.0 {
                40.0
            } else {
                -1000.0
            }
        });
        Volume::new(hu, Geometry::identity([0.8, 0.8, 2.0])).unwrap()
    }

    #[test]
    fn bf16_output_is_close_to_fp32_but_really_reduced() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let t = cpu_translator(&g);
        let vol = phantom();
        let run = |precision| {
            let opts = PredictOptions {
                precision,
                ..PredictOptions::new()
            };
            t.translate_volume(&vol, &opts, |_| {}).unwrap()
        };
        let (fp32, bf16) = (run(Precision::Fp32), run(Precision::Bf16));
        assert_eq!(bf16.geometry, vol.geometry);
        let diff: Vec<f32> = fp32
            .data
            .iter()
            .zip(bf16.data.iter())
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diff.iter().copied().fold(0.0f32, f32::max);
        // bf16 keeps 8 mantissa bits: a relative error of ~2^-8 of the window (~ a few HU to
        // tens of HU through a random network), never a broken output.
        let span = IntensityWindow::default().max - IntensityWindow::default().min;
        assert!(max > 0.0, "bf16 changed nothing: autocast did not run");
        assert!(
            max < 0.05 * span,
            "max HU error {max} of a {span} HU window"
        );
        // fp32 twice is deterministic (the difference is the precision, not noise).
        assert_eq!(run(Precision::Fp32).data, fp32.data);
    }

    /// #13 item 2: an absurd `--model-spacing` is refused before any memory is asked for.
    #[test]
    fn an_absurd_model_spacing_is_refused() {
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let opts = PredictOptions {
            model_spacing_xy: Some([0.001, 0.001]),
            ..PredictOptions::new()
        };
        let err = cpu_translator(&g)
            .translate_volume(&phantom(), &opts, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("--model-spacing"), "{err}");
    }

    #[test]
    fn f16_is_cuda_only_and_precisions_parse() {
        let vs = VarStore::new(Device::Cpu);
        let g = tiny_generator(&vs);
        let t = cpu_translator(&g);
        let opts = PredictOptions {
            precision: Precision::F16,
            ..PredictOptions::new()
        };
        let err = t.translate_volume(&phantom(), &opts, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("f16") && err.to_string().contains("CUDA"),
            "{err}"
        );
        assert!(check_precision(Precision::F16, Device::Cuda(0)).is_ok());
        assert_eq!(Precision::parse("BF16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("fp16").unwrap(), Precision::F16);
        assert_eq!(Precision::parse("fp32").unwrap(), Precision::Fp32);
        assert!(Precision::parse("int8").is_err());
        assert_eq!(PredictOptions::default().precision, Precision::Fp32);
    }
}
