//! Preparing one case: checksums, the "already prepared?" test, reading, checks, alignment,
//! resampling, masks, and the store.

use super::checks::{check_pair, target_grid, PairGeometryError};
use crate::manifest::{
    AlignMode, AlignmentRecord, CaseMeta, CaseSettings, GridRecord, MaskRecord, MaskSource,
    SourceRecord, TOOL_VERSION,
};
use crate::raw::{CasePair, Source, SourceKind};
use crate::store::{self, CaseArrays, StoreError};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::{debug, info};
use util::checksum::sha256_path;
use volume::io::dicom::SeriesSelection;
use volume::io::{read_ct_selected, read_mask};
use volume::masks::{body_mask, lung_mask};
use volume::register::{align_rigid, RigidResult, Similarity};
use volume::resample::{resample, resample_mask, Grid, Interpolation};
use volume::{Mask, Volume, VolumeError};

/// HU outside a scan's field of view: air.
pub const FILL_HU: f32 = -1024.0;

/// Why a case could not be prepared. Each variant names the file(s) concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{}: cannot read for its checksum: {source}", path.display())]
    Checksum {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Geometry(#[from] PairGeometryError),
    #[error("{}: lung mask: {message}", path.display())]
    LungMask { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rigid alignment did not find a plausible match: not the same patient, a wrong
    /// spacing in a header, or a scan of another body part.
    #[error("{} and {}: {message}", ncct.display(), ctpa.display())]
    Alignment {
        ncct: PathBuf,
        ctpa: PathBuf,
        message: String,
    },
}

/// Below this normalised cross-correlation after rigid alignment a pair is refused: the
/// NCCT and the CTPA of one patient differ only by contrast and motion (the phantom's pairs
/// align to 0.9 and above), while unrelated or mis-scaled volumes stay near 0.2.
pub const MIN_ALIGNED_NCC: f64 = 0.5;
/// Above this rotation a pair is refused: patients lie on the table within a few degrees of
/// each other between two scans; a larger angle is the optimiser fitting a wrong pair.
pub const MAX_ROTATION_DEG: f64 = 20.0;
/// Voxels are clipped to this HU range before registration, so that a few outliers (metal,
/// a corrupt 1e9 HU voxel) cannot dominate the similarity: the CT range of the scoring window.
pub const REGISTRATION_CLIP_HU: [f32; 2] = [-1024.0, 3071.0];

/// What happened to a case.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseOutcome {
    /// Prepared now.
    Prepared(CaseMeta),
    /// Already prepared with the same settings and sources: kept.
    Reused(CaseMeta),
}

impl CaseOutcome {
    pub fn meta(&self) -> &CaseMeta {
        match self {
            CaseOutcome::Prepared(m) | CaseOutcome::Reused(m) => m,
        }
    }
}

/// Refuses an implausible alignment (see [`MIN_ALIGNED_NCC`], [`MAX_ROTATION_DEG`]).
fn check_alignment(r: &RigidResult, pair: &CasePair) -> Result<(), CaseError> {
    let refuse = |message: String| {
        Err(CaseError::Alignment {
            ncct: pair.ncct.path.clone(),
            ctpa: pair.ctpa.path.clone(),
            message,
        })
    };
    let angle = r.transform.rotation_angle_deg();
    if angle > MAX_ROTATION_DEG {
        return refuse(format!(
            "the rigid alignment rotates by {angle:.1} degrees (more than {MAX_ROTATION_DEG}): \
             not a plausible pair of one patient's scans; check the files and their spacing"
        ));
    }
    if r.metric == Similarity::Ncc && r.after < MIN_ALIGNED_NCC {
        return refuse(format!(
            "after rigid alignment the NCC is only {:.2} (below {MIN_ALIGNED_NCC}): not the \
             same patient, a wrong voxel size, or another body part",
            r.after
        ));
    }
    Ok(())
}

fn record(source: &Source) -> Result<SourceRecord, CaseError> {
    let sha256 = sha256_path(&source.path).map_err(|e| CaseError::Checksum {
        path: e.path,
        source: e.source,
    })?;
    Ok(SourceRecord {
        path: source.path.clone(),
        kind: source.kind,
        sha256,
    })
}

fn grid_record<T>(v: &Volume<T>) -> GridRecord {
    GridRecord {
        shape_zyx: v.shape_zyx(),
        geometry: v.geometry,
    }
}

fn volume_ml(mask: &Mask) -> f64 {
    let s = mask.geometry.spacing;
    let voxel_ml = s[0] * s[1] * s[2] / 1000.0;
    mask.data.iter().filter(|&&v| v != 0).count() as f64 * voxel_ml
}

fn hu_range(v: &Volume) -> [f32; 2] {
    v.value_range().map_or([f32::NAN; 2], |(lo, hi)| [lo, hi])
}

/// Why an existing store cannot be reused, or `None` when it can.
fn stale_reason(
    old: &CaseMeta,
    settings: &CaseSettings,
    ncct: &SourceRecord,
    ctpa: &SourceRecord,
    lung: &Option<SourceRecord>,
) -> Option<&'static str> {
    let sums = |r: &Option<SourceRecord>| r.as_ref().map(|r| r.sha256.clone());
    if old.tool_version != TOOL_VERSION {
        Some("prepared by another tool version")
    } else if &old.settings != settings {
        Some("settings changed")
    } else if old.ncct.sha256 != ncct.sha256 || old.ctpa.sha256 != ctpa.sha256 {
        Some("source changed")
    } else if sums(&old.lung) != sums(lung) {
        Some("lung mask changed")
    } else {
        None
    }
}

/// Prepares `pair` into the prepared folder `root`, or reuses its existing store.
pub fn prepare_case(
    root: &Path,
    pair: &CasePair,
    settings: &CaseSettings,
) -> Result<CaseOutcome, CaseError> {
    let started = Instant::now();
    let case = &pair.case;
    let ncct_rec = record(&pair.ncct)?;
    let ctpa_rec = record(&pair.ctpa)?;
    let lung_rec = match &pair.lung {
        Some(p) => Some(record(&Source {
            path: p.clone(),
            kind: SourceKind::Nifti,
        })?),
        None => None,
    };

    match store::read_case_meta(root, case) {
        Ok(Some(old)) => match stale_reason(&old, settings, &ncct_rec, &ctpa_rec, &lung_rec) {
            None => {
                info!(case = %case, "already prepared with the same settings and sources: skipped");
                let mut meta = old;
                // The raw folder may have moved; the checksums say the content is the same.
                meta.ncct.path = ncct_rec.path;
                meta.ctpa.path = ctpa_rec.path;
                meta.lung = lung_rec;
                return Ok(CaseOutcome::Reused(meta));
            }
            Some(why) => info!(case = %case, "redoing: {why}"),
        },
        Ok(None) => {}
        Err(e) => info!(case = %case, "redoing: existing store unusable: {e}"),
    }

    // 1. read and check
    let selection = SeriesSelection::Rule(settings.series.clone());
    let (ncct, ncct_series) = read_ct_selected(&pair.ncct.path, &selection)?;
    let (ctpa, ctpa_series) = read_ct_selected(&pair.ctpa.path, &selection)?;
    for (what, choice) in [("NCCT", &ncct_series), ("CTPA", &ctpa_series)] {
        if let Some(c) = choice {
            info!(case = %case, "{what} series {}: {}", c.uid, c.reason);
        }
    }
    check_pair(&ncct, &ctpa, &pair.ncct.path, &pair.ctpa.path)?;
    debug!(case = %case, ncct = ?ncct.size_xyz(), ctpa = ?ctpa.size_xyz(), "read pair");

    // 2. rigid alignment, on the volumes as read (one interpolation of the CTPA in all)
    let rigid = match settings.align {
        AlignMode::Rigid => {
            let clip = |v: &Volume| Volume {
                data: v
                    .data
                    .mapv(|x| x.clamp(REGISTRATION_CLIP_HU[0], REGISTRATION_CLIP_HU[1])),
                geometry: v.geometry,
            };
            let r = align_rigid(&clip(&ncct), &clip(&ctpa), &settings.rigid)?;
            info!(
                case = %case,
                "rigid alignment: {} ({} {:.4} -> {:.4}, {} iterations)",
                r.transform, r.metric, r.before, r.after, r.iterations
            );
            check_alignment(&r, pair)?;
            Some(r)
        }
        AlignMode::None => None,
    };

    // 3. common grid
    let grid = target_grid(&ncct, &ctpa, settings.spacing);
    let ncct_r = if grid == Grid::of(&ncct) {
        ncct.clone()
    } else {
        resample(&ncct, &grid, None, Interpolation::Linear, FILL_HU)?
    };
    let transform = rigid.as_ref().map(|r| &r.transform);
    let ctpa_r = resample(&ctpa, &grid, transform, Interpolation::Linear, FILL_HU)?;

    // 4. masks, from the NCCT (the network's input; no contrast to confuse thresholds)
    let body = body_mask(&ncct_r, &settings.masks);
    let (lung, lung_source) = match &pair.lung {
        Some(path) => {
            let m = read_mask(path)?;
            let m = resample_mask(&m, &grid, None)?;
            if m.data.iter().all(|&v| v == 0) {
                return Err(CaseError::LungMask {
                    path: path.clone(),
                    message: "empty on the NCCT's grid (does it belong to this case?)".into(),
                });
            }
            (m, MaskSource::Supplied)
        }
        None => (
            lung_mask(&ncct_r, &body, &settings.masks)?,
            MaskSource::Computed,
        ),
    };

    let alignment = rigid.map(|r| AlignmentRecord {
        rotation_deg: r.transform.rotation_angle_deg(),
        translation_mm: r
            .transform
            .translation
            .iter()
            .map(|t| t * t)
            .sum::<f64>()
            .sqrt(),
        transform: r.transform,
        metric: r.metric.to_string(),
        before: r.before,
        after: r.after,
        iterations: r.iterations,
    });
    let meta = CaseMeta {
        case: case.clone(),
        tool_version: TOOL_VERSION.to_owned(),
        settings: settings.clone(),
        ncct: ncct_rec,
        ctpa: ctpa_rec,
        lung: lung_rec,
        ncct_grid: grid_record(&ncct),
        ctpa_grid: grid_record(&ctpa),
        grid: grid_record(&ncct_r),
        alignment,
        masks: MaskRecord {
            body_ml: volume_ml(&body),
            lung_ml: volume_ml(&lung),
            lung_source,
        },
        ncct_hu_range: hu_range(&ncct_r),
        ctpa_hu_range: hu_range(&ctpa_r),
        ncct_series,
        ctpa_series,
    };
    store::write_case(
        root,
        &meta,
        CaseArrays {
            ncct: &ncct_r.data,
            ctpa: &ctpa_r.data,
            body: &body.data,
            lung: &lung.data,
        },
    )?;
    info!(
        case = %case,
        slices = meta.slices(),
        lung_ml = format!("{:.0}", meta.masks.lung_ml),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "prepared"
    );
    Ok(CaseOutcome::Prepared(meta))
}
