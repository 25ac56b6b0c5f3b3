//! The regions a case is scored in, and where each case's mask comes from.
//!
//! - **body**: the given mask folder, or [`volume::masks::body_mask`] on the *target* (the
//!   target is the reference, and its body is what the prediction must reproduce).
//! - **lung**: the given folder, or [`volume::masks::lung_mask`] on the target within the body.
//! - **vessel**: the given folder (the phantom's `truth/vessels`), or derived from the target
//!   CTPA as the voxels above [`VesselRule::threshold_hu`] (150 HU) inside the lung mask,
//!   optionally dilated by [`VesselRule::lung_dilation_mm`] (default 0 mm). In CTPA,
//!   contrast-filled pulmonary vessels are 250-500 HU while parenchyma and unenhanced blood
//!   stay below 100 HU, so the rule picks the enhanced vessels, which is what a synthetic CTPA
//!   must get right (the NCCT baseline fails exactly there). The lung mask already holds the
//!   intrapulmonary vessels (it is closed and hole-filled). Dilating it to take in hilar
//!   vessels also takes in rib and spine cortex, which exceeds 150 HU too: measured on phantom
//!   cases (2.8 x 2.8 x 5 mm voxels) against the ground-truth masks, the undilated rule gives
//!   a mask that is 100 % blood, while a 3 mm dilation makes it ~60 % bone and 5 mm ~70 %
//!   (the NCCT baseline's vessel MAE then drops from ~300 HU to ~100 HU, a score of bone, not
//!   contrast). Hence no dilation by default; prefer given vessel masks when they exist.
//! - **custom**: any other folder of masks, named after the folder.
//!
//! Every mask must lie on the target's grid; masks are computed at most once per case.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use tracing::debug;
use volume::masks::{body_mask, lung_mask, morphology::dilate, MaskConfig};
use volume::{Mask, Volume};

use super::cases::mask_file;
use super::{check_grid, EvalError};

/// A region to score in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    Body,
    Lung,
    Vessel,
    /// Masks from a folder (`DIR/CASE.nii.gz`), reported under `name`.
    Custom {
        name: String,
        dir: PathBuf,
    },
}

impl Region {
    /// The default regions: body, lung, vessel.
    pub fn defaults() -> Vec<Region> {
        vec![Region::Body, Region::Lung, Region::Vessel]
    }

    /// A custom region from a folder, named after the folder.
    pub fn custom(dir: &Path) -> Region {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "mask".into());
        Region::Custom {
            name,
            dir: dir.to_path_buf(),
        }
    }

    /// Name in reports.
    pub fn name(&self) -> &str {
        match self {
            Region::Body => "body",
            Region::Lung => "lung",
            Region::Vessel => "vessel",
            Region::Custom { name, .. } => name,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the vessel mask is derived from the target CTPA when no vessel masks are given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VesselRule {
    /// Target voxels above this are enhanced vessel (HU).
    pub threshold_hu: f32,
    /// The lung mask is dilated by this radius (mm) before the threshold is applied (0: not
    /// at all; see the module docs for why that is the default).
    pub lung_dilation_mm: f64,
}

impl Default for VesselRule {
    fn default() -> Self {
        Self {
            threshold_hu: 150.0,
            lung_dilation_mm: 0.0,
        }
    }
}

/// Where the masks come from: folders that replace computed masks, and the rules otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskSources {
    pub body_dir: Option<PathBuf>,
    pub lung_dir: Option<PathBuf>,
    pub vessel_dir: Option<PathBuf>,
    /// Thresholds of the classical body and lung masks.
    pub masks: MaskConfig,
    pub vessel: VesselRule,
}

impl MaskSources {
    /// How `region`'s masks are obtained, in words (for the summary file).
    pub fn describe(&self, region: &Region) -> String {
        let given = |d: &Option<PathBuf>| d.as_ref().map(|d| format!("given: {}", d.display()));
        match region {
            Region::Body => given(&self.body_dir)
                .unwrap_or_else(|| "computed: volume::masks::body_mask on the target".into()),
            Region::Lung => given(&self.lung_dir).unwrap_or_else(|| {
                "computed: volume::masks::lung_mask on the target, inside the body mask".into()
            }),
            Region::Vessel => given(&self.vessel_dir).unwrap_or_else(|| {
                let grown = if self.vessel.lung_dilation_mm > 0.0 {
                    format!(" dilated by {} mm", self.vessel.lung_dilation_mm)
                } else {
                    String::new()
                };
                format!(
                    "derived: target > {} HU inside the lung mask{grown}",
                    self.vessel.threshold_hu
                )
            }),
            Region::Custom { dir, .. } => format!("given: {}", dir.display()),
        }
    }
}

/// The masks of one case, built on demand and kept.
pub(crate) struct CaseMasks<'a> {
    case: &'a str,
    target: &'a Volume,
    target_path: &'a Path,
    sources: &'a MaskSources,
    grid_tolerance: f64,
    body: Option<Mask>,
    lung: Option<Mask>,
}

impl<'a> CaseMasks<'a> {
    pub(crate) fn new(
        case: &'a str,
        target: &'a Volume,
        target_path: &'a Path,
        sources: &'a MaskSources,
        grid_tolerance: f64,
    ) -> Self {
        Self {
            case,
            target,
            target_path,
            sources,
            grid_tolerance,
            body: None,
            lung: None,
        }
    }

    /// Reads `region`'s mask of this case from `dir`, checking it lies on the target's grid.
    fn read(&self, dir: &Path, region: &str) -> Result<Mask, EvalError> {
        let path = mask_file(dir, self.case, region)?;
        let mask = volume::io::read_mask(&path)?;
        check_grid(
            self.case,
            self.target,
            self.target_path,
            &mask,
            &path,
            self.grid_tolerance,
        )?;
        debug!(case = self.case, region, path = %path.display(), "read mask");
        Ok(mask)
    }

    fn body(&mut self) -> Result<&Mask, EvalError> {
        let m = match self.body.take() {
            Some(m) => m,
            None => match &self.sources.body_dir {
                Some(dir) => self.read(dir, "body")?,
                None => body_mask(self.target, &self.sources.masks),
            },
        };
        Ok(self.body.insert(m))
    }

    fn lung(&mut self) -> Result<&Mask, EvalError> {
        let (target, sources) = (self.target, self.sources);
        let m = match self.lung.take() {
            Some(m) => m,
            None => match &sources.lung_dir {
                Some(dir) => self.read(dir, "lung")?,
                None => lung_mask(target, self.body()?, &sources.masks)?,
            },
        };
        Ok(self.lung.insert(m))
    }

    fn vessel(&mut self) -> Result<Mask, EvalError> {
        if let Some(dir) = &self.sources.vessel_dir {
            return self.read(dir, "vessel");
        }
        let rule = self.sources.vessel;
        let target = self.target;
        let s = target.geometry.spacing;
        let lung = self.lung()?;
        let grown;
        let region = if rule.lung_dilation_mm > 0.0 {
            grown = dilate(lung.data.view(), rule.lung_dilation_mm, [s[2], s[1], s[0]]);
            grown.view()
        } else {
            lung.data.view()
        };
        let data = ndarray::Zip::from(&region)
            .and(&target.data)
            .map_collect(|&l, &v| u8::from(l != 0 && v > rule.threshold_hu));
        Ok(Volume {
            data,
            geometry: target.geometry,
        })
    }

    /// The mask of `region` for this case.
    pub(crate) fn get(&mut self, region: &Region) -> Result<Mask, EvalError> {
        match region {
            Region::Body => self.body().cloned(),
            Region::Lung => self.lung().cloned(),
            Region::Vessel => self.vessel(),
            Region::Custom { name, dir } => self.read(dir, name),
        }
    }
}
