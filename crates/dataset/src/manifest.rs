//! The prepared dataset's description: `PREPARED/manifest.json` and each case's `meta.json`.
//!
//! The manifest is what training, validation and evaluation read first. It holds:
//! - the format name and version ([`FORMAT`], [`FORMAT_VERSION`]) and the tool version that
//!   wrote it; readers refuse any other format version rather than misread the stores;
//! - `status`: `in_progress` while `prepare` runs (it is rewritten after every case, so an
//!   interrupted run leaves an honest record), `complete` once every case is done and the
//!   split is assigned; [`crate::store::PreparedDataset::open`] accepts only `complete`;
//! - the HU window the network's [-1, 1] intensities refer to ([`IntensityWindow`]), the
//!   processing settings ([`CaseSettings`]) and how the split was made ([`SplitSpec`]);
//! - one [`CaseEntry`] per prepared case: its split and its [`CaseMeta`] (sources with SHA-256
//!   checksums, geometry before and after resampling, the rigid alignment found, mask volumes);
//! - what was skipped and why (discovery and per-case failures).
//!
//! Each case folder also holds its own `meta.json` (the same [`CaseMeta`]), written inside the
//! folder before the folder is renamed into place. That file, not the manifest, decides whether
//! a case is already prepared: the folder rename is the single commit point of a case, so a
//! crash at any moment can never leave a manifest vouching for a store it does not describe.

pub mod split;

pub use split::{Split, SplitFractions};

use crate::raw::{Skipped, SourceKind};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use volume::masks::MaskConfig;
use volume::register::RigidConfig;
use volume::transform::Rigid3;
use volume::Geometry;

/// `format` field of every manifest.
pub const FORMAT: &str = "ncct2ctpa-prepared";
/// Bumped whenever the on-disk layout or the meaning of a field changes.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside the prepared folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The split as a split file (`{"CASE": "train", ...}`), for `prepare --split-file`.
pub const SPLIT_FILE: &str = "split.json";
/// Version of the crate that wrote a manifest or case.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The intensity window of the network: HU clipped to `[min, max]` and mapped linearly to
/// `[-1, 1]`, the range G's input and output live in (not to be confused with
/// `metrics::ScoreWindow`, the window scores are computed in).
///
/// The default `[-1024, 1500]` covers everything this task needs to see: air and lung
/// parenchyma (-1000 .. -500), soft tissue and unenhanced blood (~40), iodinated pulmonary
/// arteries on CTPA (300 .. 600, up to ~1000 near the injection side) and most bone, while
/// spending no range on metal and streaks above 1500 HU. One unit of the network's scale is
/// 1262 HU, so an error of 0.01 is 12.6 HU. The window is stored in the manifest and, by the
/// trainer, with the model, so prediction maps back to HU without being told.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntensityWindow {
    pub min: f32,
    pub max: f32,
}

impl Default for IntensityWindow {
    fn default() -> Self {
        Self {
            min: -1024.0,
            max: 1500.0,
        }
    }
}

impl IntensityWindow {
    /// A window with finite `min < max`.
    pub fn new(min: f32, max: f32) -> Result<Self, String> {
        if !(min.is_finite() && max.is_finite() && min < max) {
            return Err(format!(
                "HU window must be finite with MIN < MAX, got [{min}, {max}]"
            ));
        }
        Ok(Self { min, max })
    }

    /// HU -> `[-1, 1]`, clipping outside the window.
    #[inline]
    pub fn normalize(&self, hu: f32) -> f32 {
        let t = (hu.clamp(self.min, self.max) - self.min) / (self.max - self.min);
        2.0 * t - 1.0
    }

    /// `[-1, 1]` -> HU (values outside `[-1, 1]` are clipped first).
    #[inline]
    pub fn denormalize(&self, x: f32) -> f32 {
        let t = (x.clamp(-1.0, 1.0) + 1.0) * 0.5;
        self.min + t * (self.max - self.min)
    }
}

/// The common grid both volumes of a case are resampled to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpacingMode {
    /// Keep the NCCT's in-plane spacing, orientation and field of view; slice spacing is the
    /// coarser of the two volumes' (interpolating the coarser one to thinner slices would
    /// invent detail the training target does not have). The NCCT, the network's input, is
    /// therefore never resampled in-plane.
    Auto,
    /// This spacing `(x, y, z)` in mm over the NCCT's orientation and field of view.
    Fixed([f64; 3]),
}

/// Whether the CTPA is rigidly pre-aligned to the NCCT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlignMode {
    /// Multi-resolution rigid registration (see `volume::register`); RegGAN's registration
    /// network then only absorbs the small non-rigid residual (breathing, heart).
    Rigid,
    /// Use the volumes as they lie in patient space.
    None,
}

/// The settings that determine a case's stored bytes: a case prepared with other settings (or
/// by another tool version) is redone. The HU window is not among them: the store holds HU and
/// the window is applied when slices are read, so changing it rewrites only the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSettings {
    pub spacing: SpacingMode,
    pub align: AlignMode,
    /// Registration settings (used when `align` is `rigid`).
    pub rigid: RigidConfig,
    /// Body and lung mask settings (the lung settings are unused for supplied lung masks).
    pub masks: MaskConfig,
    /// Which series of a DICOM folder to read (NCCT and CTPA alike; manifests written
    /// before the rule existed read as "any series").
    #[serde(default)]
    pub series: volume::io::dicom::SeriesRule,
}

impl Default for CaseSettings {
    /// NCCT grid, rigid pre-alignment on: real pairs are acquired minutes apart with the
    /// patient repositioned, and RegGAN's registration network is built for small residuals.
    fn default() -> Self {
        Self {
            spacing: SpacingMode::Auto,
            align: AlignMode::Rigid,
            rigid: RigidConfig::default(),
            masks: MaskConfig::default(),
            series: Default::default(),
        }
    }
}

/// How the split was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SplitSpec {
    Seeded {
        seed: u64,
        fractions: SplitFractions,
    },
    File {
        path: PathBuf,
    },
}

/// One source volume of a case, with its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub path: PathBuf,
    pub kind: SourceKind,
    /// SHA-256 of the file, or for a DICOM folder of every file below it (relative path,
    /// length and content, in sorted path order); lower-case hex.
    pub sha256: String,
}

/// A voxel grid: shape and geometry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridRecord {
    /// `[z, y, x]`, the order of the stored arrays.
    pub shape_zyx: [usize; 3],
    pub geometry: Geometry,
}

/// The rigid pre-alignment found for a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentRecord {
    /// Maps NCCT (fixed) points to CTPA (moving) points, ITK convention.
    pub transform: Rigid3,
    /// Rotation angle of the transform, degrees, and length of its translation, mm: the two
    /// numbers a reader checks first.
    pub rotation_deg: f64,
    pub translation_mm: f64,
    /// The similarity measure, and its value before and after (higher is more similar).
    pub metric: String,
    pub before: f64,
    pub after: f64,
    pub iterations: usize,
}

/// Where a case's lung mask came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// Computed by `volume::masks` from the NCCT.
    Computed,
    /// The user's `lung/CASE.nii[.gz]`, resampled to the case grid (nearest neighbour).
    Supplied,
}

/// Mask volumes, for a quick plausibility check (adult lungs: roughly 3000 .. 8000 mL).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskRecord {
    pub body_ml: f64,
    pub lung_ml: f64,
    pub lung_source: MaskSource,
}

/// Everything known about one prepared case; also stored as `cases/CASE/meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseMeta {
    pub case: String,
    pub tool_version: String,
    pub settings: CaseSettings,
    pub ncct: SourceRecord,
    pub ctpa: SourceRecord,
    pub lung: Option<SourceRecord>,
    /// Grids of the sources as read.
    pub ncct_grid: GridRecord,
    pub ctpa_grid: GridRecord,
    /// The grid of the stored arrays (all four share it).
    pub grid: GridRecord,
    pub alignment: Option<AlignmentRecord>,
    pub masks: MaskRecord,
    /// HU range of the stored NCCT and CTPA (after resampling, before clipping to i16).
    pub ncct_hu_range: [f32; 2],
    pub ctpa_hu_range: [f32; 2],
    /// The series read from a DICOM folder of several, and why ([`CaseSettings::series`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ncct_series: Option<volume::io::dicom::SeriesChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctpa_series: Option<volume::io::dicom::SeriesChoice>,
}

impl CaseMeta {
    /// Number of axial slices in the store.
    pub fn slices(&self) -> usize {
        self.grid.shape_zyx[0]
    }
}

/// A case in the manifest: its split and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEntry {
    pub split: Split,
    /// Folder of the case's store, relative to the prepared folder (`cases/CASE`).
    pub dir: PathBuf,
    #[serde(flatten)]
    pub meta: CaseMeta,
}

impl CaseEntry {
    pub fn name(&self) -> &str {
        &self.meta.case
    }
}

/// Whether `prepare` finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestStatus {
    InProgress,
    Complete,
}

/// `PREPARED/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub tool_version: String,
    pub status: ManifestStatus,
    pub raw_dir: PathBuf,
    pub window: IntensityWindow,
    pub settings: CaseSettings,
    pub split: SplitSpec,
    pub cases: Vec<CaseEntry>,
    pub skipped: Vec<Skipped>,
}

impl Manifest {
    /// The case named `name`.
    pub fn case(&self, name: &str) -> Option<&CaseEntry> {
        self.cases.iter().find(|c| c.meta.case == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maps_ends_to_unit_interval_and_back() {
        let w = IntensityWindow::default();
        assert_eq!(w.normalize(-1024.0), -1.0);
        assert_eq!(w.normalize(1500.0), 1.0);
        assert_eq!(w.normalize(-3000.0), -1.0);
        assert_eq!(w.normalize(4000.0), 1.0);
        let mid = (w.min + w.max) / 2.0;
        assert!(w.normalize(mid).abs() < 1e-6);
        for hu in [-1000.0f32, -500.0, 0.0, 40.0, 350.0, 1200.0] {
            assert!((w.denormalize(w.normalize(hu)) - hu).abs() < 1e-3, "{hu}");
        }
        assert!(IntensityWindow::new(100.0, 100.0).is_err());
        assert!(IntensityWindow::new(f32::NAN, 100.0).is_err());
    }
}
