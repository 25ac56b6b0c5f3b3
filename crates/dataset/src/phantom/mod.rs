//! The seeded 3D chest phantom: paired NCCT / CTPA volumes with exact ground truth.
//!
//! Real paired scans cannot reach the machines this project runs on, so it carries its own
//! benchmark. A case is a parametric patient ([`anatomy`]) with a body wall, subcutaneous fat,
//! muscle, ribs, sternum, clavicles, scapulae, spine, heart chambers, aorta and its arch
//! branches, venae cavae, pulmonary trunk and branching pulmonary arterial and venous trees
//! ([`vessels`]), trachea and bronchi, oesophagus, liver and stomach, lying on a CT table. The
//! NCCT shows blood at ~40 HU; the CTPA is the same anatomy with contrast ([`tissue`]) and,
//! in some cases, pulmonary emboli (filling defects). The CTPA is then moved by a known smooth
//! deformation ([`deformation`]), and each scan gets its own noise ([`noise`]).
//!
//! Determinism: a case depends only on `(config, case index)`. All random parameters are
//! drawn sequentially from one ChaCha stream per case; the parallel parts (rendering, noise,
//! warping) are pure functions of those parameters and of slice indices, so the same seed gives
//! the same voxels — and, with the deterministic gzip of the NIfTI writer, the same bytes — on
//! any number of threads.
//!
//! ```no_run
//! use dataset::phantom::{generate_case, PhantomConfig};
//! let case = generate_case(&PhantomConfig::default(), 0)?;
//! println!("{:?}", case.ncct.size_xyz());
//! # Ok::<(), dataset::phantom::PhantomError>(())
//! ```

pub mod anatomy;
pub mod deformation;
pub mod montage;
pub mod noise;
pub mod render;
pub mod shapes;
pub mod tissue;
pub mod vessels;
pub mod writer;

pub use writer::{write_dataset, CaseSummary, DatasetSummary, WriteOptions};

use anatomy::{Anatomy, PaintTube};
use deformation::{displacement_field, max_magnitude, warp, Frame, Motion};
use ndarray::Array3;
use noise::{add_scanner_noise, derive_seed, gaussian_blur};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use render::{render, Scene};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tissue::{Contrast, TubeClass};
use tracing::debug;
use vessels::{bronchi, grow_trees, place_emboli, Embolus};
use volume::{Geometry, Mask, Volume, VolumeError};

/// Errors of the phantom generator and its dataset writer.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("invalid phantom configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Grid presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomSize {
    /// 128 x 128 at 2.81 mm in-plane, 56 slices of 5 mm: trains in minutes on a CPU.
    #[default]
    Small,
    /// 512 x 512 at 0.70 mm, 140 slices of 2 mm: a clinical CTPA grid.
    Full,
}

impl PhantomSize {
    /// `(nx, ny, nz)` and `(in-plane, slice)` spacing in mm.
    pub fn grid(self) -> ([usize; 3], [f64; 2]) {
        match self {
            PhantomSize::Small => ([128, 128, 56], [360.0 / 128.0, 5.0]),
            PhantomSize::Full => ([512, 512, 140], [360.0 / 512.0, 2.0]),
        }
    }

    /// Target points per lung for each vessel tree: sets how far the trees branch.
    fn points_per_lung(self) -> usize {
        match self {
            PhantomSize::Small => 400,
            PhantomSize::Full => 1500,
        }
    }
}

/// What to generate. Every field has a documented default; the configuration is stored in the
/// dataset's `phantom.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Grid preset (default small).
    pub size: PhantomSize,
    /// Master seed (default 0); case `i` uses a stream derived from `(seed, i)`.
    pub seed: u64,
    /// Largest displacement (mm) of the CTPA relative to the NCCT inside the body; 0 means
    /// the pair is perfectly aligned (default 5).
    pub misalignment_mm: f64,
    /// Probability that a case carries pulmonary emboli (1–4 of them) (default 0.6).
    pub emboli_probability: f64,
    /// Standard deviation of the scanner noise, HU (default 12); each scan draws its own.
    pub noise_hu: f32,
    /// Bronchi beside the pulmonary arteries (the bronchovascular bundle, [`vessels::bronchi`]):
    /// the airways otherwise stop at the main bronchi, and a small artery looks like a small
    /// vein in the NCCT (default off; a set without them is unchanged, and so is its
    /// `phantom.json`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bronchi: bool,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            size: PhantomSize::Small,
            seed: 0,
            misalignment_mm: 5.0,
            emboli_probability: 0.6,
            noise_hu: 12.0,
            bronchi: false,
        }
    }
}

impl PhantomConfig {
    /// Checks ranges; the generator refuses values that would give no sensible chest CT.
    pub fn validate(&self) -> Result<(), PhantomError> {
        if !self.misalignment_mm.is_finite() || !(0.0..=30.0).contains(&self.misalignment_mm) {
            return Err(PhantomError::Config(format!(
                "misalignment must be between 0 and 30 mm, got {}",
                self.misalignment_mm
            )));
        }
        if !(0.0..=1.0).contains(&self.emboli_probability) {
            return Err(PhantomError::Config(format!(
                "emboli probability must be in [0, 1], got {}",
                self.emboli_probability
            )));
        }
        if !self.noise_hu.is_finite() || !(0.0..=200.0).contains(&self.noise_hu) {
            return Err(PhantomError::Config(format!(
                "noise must be between 0 and 200 HU, got {}",
                self.noise_hu
            )));
        }
        Ok(())
    }
}

/// The random parameters of one case, as stored in `phantom.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseParams {
    pub name: String,
    pub index: usize,
    pub anatomy: Anatomy,
    pub contrast: Contrast,
    pub emboli: Vec<Embolus>,
    /// The applied motion (anatomical frame; see [`deformation`]).
    pub motion: Motion,
    /// Physical (LPS) position of the anatomical frame's origin.
    pub anatomy_origin: [f64; 3],
    /// Largest displacement inside the body, mm (equals the configured misalignment).
    pub max_displacement_mm: f64,
    pub artery_branches: usize,
    pub vein_branches: usize,
}

/// One generated case. All volumes and masks share the NCCT's grid; the masks describe the
/// NCCT (and `ctpa_aligned`) anatomy.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    pub params: CaseParams,
    pub ncct: Volume,
    /// The CTPA as acquired: moved by `displacement` relative to the NCCT.
    pub ctpa: Volume,
    /// The CTPA before the motion: voxel for voxel aligned with the NCCT, with the same
    /// scanner noise as `ctpa` (noise belongs to the scanner, not to the tissue).
    pub ctpa_aligned: Volume,
    /// Inside the patient (not air, not the table).
    pub body: Mask,
    /// Lung parenchyma including the intrapulmonary vessels.
    pub lung: Mask,
    /// Pulmonary arteries (trunk to periphery), including their emboli.
    pub arteries: Mask,
    /// Pulmonary veins.
    pub veins: Mask,
    /// Emboli (always inside `arteries`).
    pub emboli: Mask,
    /// All blood: cardiac chambers, aorta and branches, venae cavae, pulmonary vessels.
    pub blood: Mask,
    /// Displacement `[dx, dy, dz]` (mm, LPS) on the NCCT grid: the tissue at NCCT point `p`
    /// sits at `p + u(p)` in `ctpa`.
    pub displacement: [Array3<f32>; 3],
}

/// Case file stem: `case_000`.
pub fn case_name(index: usize) -> String {
    format!("case_{index:03}")
}

/// Draws the scanner frame: a scanner-like LPS origin (negative x/y, table position in z) with
/// a few millimetres of patient positioning jitter.
fn sample_frame(size: PhantomSize, rng: &mut impl Rng) -> (Frame, [usize; 3]) {
    let ([nx, ny, nz], [sp, sz]) = size.grid();
    // Anatomical coordinates of the first voxel centre: a 360 mm field of view centred
    // 5 mm behind the anatomical origin, and 280 mm of chest from the upper abdomen up.
    let first = [-180.0 + sp / 2.0, -175.0 + sp / 2.0, -160.0 + sz / 2.0];
    let anatomy_origin = [
        rng.gen_range(-6.0..6.0),
        rng.gen_range(-6.0..6.0),
        -420.0 + rng.gen_range(-25.0..25.0),
    ];
    let mut geometry = Geometry::identity([sp, sp, sz]);
    geometry.origin = [
        first[0] + anatomy_origin[0],
        first[1] + anatomy_origin[1],
        first[2] + anatomy_origin[2],
    ];
    (
        Frame {
            geometry,
            anatomy_origin,
        },
        [nz, ny, nx],
    )
}

/// Generates case `index` of the phantom set described by `cfg`.
pub fn generate_case(cfg: &PhantomConfig, index: usize) -> Result<PhantomCase, PhantomError> {
    cfg.validate()?;
    let start = std::time::Instant::now();
    let case_seed = derive_seed(cfg.seed, index as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(case_seed);

    // 1. Random parameters, drawn in a fixed order.
    let anatomy = Anatomy::sample(&mut rng);
    let contrast = Contrast::sample(&mut rng);
    let mut tubes = anatomy.tubes();
    let trees = grow_trees(&anatomy, &tubes, cfg.size.points_per_lung(), &mut rng);
    let n_emboli = if rng.gen_bool(cfg.emboli_probability) {
        rng.gen_range(1..=4)
    } else {
        0
    };
    let emboli = place_emboli(&trees.arteries, n_emboli, &mut rng);
    let unit_motion = Motion::sample_unit(&mut rng);
    let (frame, shape) = sample_frame(cfg.size, &mut rng);
    let (artery_branches, vein_branches) = (trees.arteries.len(), trees.veins.len());
    if cfg.bronchi {
        let around = bronchi(&trees.arteries, &anatomy, &anatomy.heart(), &tubes);
        tubes.extend(around);
    }
    for (class, branches) in [
        (TubeClass::PulmonaryVein, &trees.veins),
        (TubeClass::PulmonaryArtery, &trees.arteries),
    ] {
        tubes.extend(branches.iter().map(|b| PaintTube {
            class,
            tube: b.tube,
            mediastinal: false,
        }));
    }
    debug!(
        index,
        artery_branches,
        vein_branches,
        emboli = emboli.len(),
        "phantom parameters drawn"
    );

    // 2. Noise-free images and masks, blurred by the scanner's point-spread function.
    let scene = Scene {
        heart: anatomy.heart(),
        anatomy,
        contrast,
        tubes,
        emboli,
    };
    let mut img = render(&scene, &frame, shape);
    let sp = frame.geometry.spacing;
    let psf = [0.35, (0.9 / sp[1]).max(0.5), (0.9 / sp[0]).max(0.5)];
    gaussian_blur(&mut img.ncct, psf);
    gaussian_blur(&mut img.ctpa, psf);

    // 3. The motion, scaled so its largest displacement inside the body is the configured
    //    misalignment; the acquired CTPA is the aligned one seen through that motion.
    let (motion, displacement, max_displacement_mm) = if cfg.misalignment_mm > 0.0 {
        let unit_field = displacement_field(&unit_motion, &frame, shape);
        let unit_max = max_magnitude(&unit_field, &img.body);
        let motion = unit_motion.scaled(cfg.misalignment_mm / unit_max.max(1e-9));
        let field = displacement_field(&motion, &frame, shape);
        let max = max_magnitude(&field, &img.body);
        (motion, field, max)
    } else {
        (
            Motion::identity(),
            std::array::from_fn(|_| Array3::zeros(shape)),
            0.0,
        )
    };
    let mut ctpa = if motion.is_identity() {
        img.ctpa.clone()
    } else {
        warp(&img.ctpa, &motion, &frame)
    };

    // 4. Scanner noise: one realisation per acquisition, shared by the CTPA and its aligned
    //    version (the motion moves tissue, not the scanner's noise).
    let mut ncct = img.ncct;
    let mut ctpa_aligned = img.ctpa;
    add_scanner_noise(&mut ncct, cfg.noise_hu, derive_seed(case_seed, 1));
    let mut ctpa_noise = Array3::zeros(shape);
    add_scanner_noise(&mut ctpa_noise, cfg.noise_hu, derive_seed(case_seed, 2));
    ctpa_aligned += &ctpa_noise;
    ctpa += &ctpa_noise;
    for a in [&mut ncct, &mut ctpa, &mut ctpa_aligned] {
        // The reconstruction range of a CT scanner.
        a.mapv_inplace(|v| v.clamp(-1024.0, 3071.0));
    }

    let geometry = frame.geometry;
    let mask = |m: Array3<u8>| Volume::new(m, geometry);
    let params = CaseParams {
        name: case_name(index),
        index,
        anatomy: scene.anatomy,
        contrast,
        emboli: scene.emboli,
        motion,
        anatomy_origin: frame.anatomy_origin,
        max_displacement_mm,
        artery_branches,
        vein_branches,
    };
    let case = PhantomCase {
        params,
        ncct: Volume::new(ncct, geometry)?,
        ctpa: Volume::new(ctpa, geometry)?,
        ctpa_aligned: Volume::new(ctpa_aligned, geometry)?,
        body: mask(img.body)?,
        lung: mask(img.lung)?,
        arteries: mask(img.arteries)?,
        veins: mask(img.veins)?,
        emboli: mask(img.emboli)?,
        blood: mask(img.blood)?,
        displacement,
    };
    debug!(
        index,
        ms = start.elapsed().as_millis() as u64,
        max_displacement_mm,
        "phantom case generated"
    );
    Ok(case)
}
