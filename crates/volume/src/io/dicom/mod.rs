//! DICOM series: reading a folder into a [`Volume`] with SimpleITK's geometry, listing the
//! series a folder holds, and writing a volume back as a CT series.
//!
//! - [`open`]: every file is opened here: [`lengths`] checks that no element claims more bytes
//!   than its file holds, deflated data sets are inflated ([`inflate`]) for dicom-rs;
//! - [`scan`]: headers of every file, grouped by SeriesInstanceUID (non-DICOM files skipped);
//! - [`assemble`]: localizers and outliers dropped, slices sorted along the normal, spacing
//!   checked, ITK geometry;
//! - [`pixels`]: pixel data decoded (compressed syntaxes included) and rescaled to HU;
//! - [`j2k`]: JPEG 2000 codestreams validated against the header, then decoded memory-safely;
//! - [`select`]: which series of a folder to read (never a localizer or a single-position
//!   series; a [`SeriesRule`] by description, kernel and thickness), and why;
//! - [`write`]: an uncompressed CT series carrying a reference series' patient and study.

pub mod assemble;
pub mod inflate;
pub mod j2k;
pub mod lengths;
pub mod open;
pub mod pixels;
pub mod scan;
pub mod select;
pub mod write;

pub use select::{SeriesChoice, SeriesFacts, SeriesRule};
pub use write::{write_series, SeriesInfo};

use crate::{Result, Volume, VolumeError};
use ndarray::Array3;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One series read from a folder.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    pub series_uid: String,
    pub volume: Volume,
    /// Summary of this series (modality, description, transfer syntax...).
    pub summary: SeriesSummary,
    /// Largest deviation of a slice gap from the slice spacing (mm).
    pub max_spacing_deviation: f64,
    /// Files of this series or folder that were not used, with the reason.
    pub dropped: Vec<(PathBuf, String)>,
    /// How the series was chosen among the folder's (`None`: it was named by UID, or the
    /// input was a single file).
    pub choice: Option<SeriesChoice>,
}

/// Which series of a folder to read.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesSelection {
    /// The one with this SeriesInstanceUID.
    Uid(String),
    /// The one [`select::choose`] picks by this rule.
    Rule(SeriesRule),
}

/// What a folder holds, per series (for `info` and for choosing a series): what the choice
/// looks at ([`SeriesFacts`], also reachable as fields of the summary) and the files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSummary {
    #[serde(flatten)]
    pub facts: SeriesFacts,
    /// Number of files in the series (localizers included).
    pub files: usize,
    /// Rows x columns of the first file.
    pub rows: usize,
    pub columns: usize,
    pub transfer_syntax: String,
}

impl std::ops::Deref for SeriesSummary {
    type Target = SeriesFacts;

    fn deref(&self) -> &SeriesFacts {
        &self.facts
    }
}

fn summarize(uid: &str, headers: &[scan::SliceHeader]) -> SeriesSummary {
    let first = headers.first();
    SeriesSummary {
        facts: SeriesFacts::of(uid, headers),
        files: headers
            .iter()
            .map(|h| h.path.as_path())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        rows: first.map_or(0, |h| h.rows),
        columns: first.map_or(0, |h| h.columns),
        transfer_syntax: first.map(|h| h.transfer_syntax.clone()).unwrap_or_default(),
    }
}

/// The series in `dir`, the most slice positions first (then the most files). An error if
/// the folder holds no DICOM image.
pub fn list_series(dir: &Path) -> Result<Vec<SeriesSummary>> {
    let scan = scan::scan_folder(dir)?;
    if scan.series.is_empty() {
        return Err(no_dicom_error(dir, &scan));
    }
    let mut list: Vec<SeriesSummary> = scan
        .series
        .iter()
        .map(|(uid, h)| summarize(uid, h))
        .collect();
    list.sort_by(|a, b| {
        (b.positions, b.files)
            .cmp(&(a.positions, a.files))
            .then(a.uid.cmp(&b.uid))
    });
    Ok(list)
}

fn no_dicom_error(dir: &Path, scan: &scan::FolderScan) -> VolumeError {
    if scan.skipped.is_empty() {
        VolumeError::format(dir, "empty folder: no DICOM files")
    } else {
        let (p, why) = &scan.skipped[0];
        VolumeError::format(
            dir,
            format!(
                "no DICOM image in the folder ({} files skipped; e.g. {}: {why})",
                scan.skipped.len(),
                p.display()
            ),
        )
    }
}

/// Every slice's pixels in stack order: single-frame files in parallel, each multi-frame file
/// decoded once for all its frames.
fn decode_planes(slices: &[scan::SliceHeader]) -> Result<Vec<Vec<f32>>> {
    let mut by_file: std::collections::BTreeMap<&Path, Vec<usize>> = Default::default();
    for (i, h) in slices.iter().enumerate().filter(|(_, h)| h.frame.is_some()) {
        by_file.entry(h.path.as_path()).or_default().push(i);
    }
    let mut planes: Vec<Option<Vec<f32>>> = slices
        .par_iter()
        .map(|h| match h.frame {
            None => pixels::decode_slice(h).map(Some),
            Some(_) => Ok(None),
        })
        .collect::<Result<_>>()?;
    for indices in by_file.values() {
        let frames: Vec<&scan::SliceHeader> = indices.iter().map(|&i| &slices[i]).collect();
        for (&i, plane) in indices.iter().zip(pixels::decode_frames(&frames)?) {
            planes[i] = Some(plane);
        }
    }
    Ok(planes.into_iter().map(Option::unwrap_or_default).collect())
}

/// Reads one DICOM series from `dir`: the one with `series_uid`, or else the one
/// [`select::choose`] picks with no rule (the CT series with the most slice positions, never a
/// localizer or a single-position series). `dir` may also be a single DICOM file (its
/// series, whatever it holds).
pub fn read_series(dir: &Path, series_uid: Option<&str>) -> Result<DicomSeries> {
    let selection = match series_uid {
        Some(uid) => SeriesSelection::Uid(uid.to_owned()),
        None => SeriesSelection::Rule(SeriesRule::default()),
    };
    read_series_selected(dir, &selection)
}

/// Reads the series of `dir` that `selection` names (see [`read_series`]).
pub fn read_series_selected(dir: &Path, selection: &SeriesSelection) -> Result<DicomSeries> {
    let single_file = dir.is_file();
    let mut scan = if single_file {
        scan::scan_files(dir, vec![dir.to_path_buf()])
    } else {
        scan::scan_folder(dir)?
    };
    if scan.series.is_empty() {
        return Err(no_dicom_error(dir, &scan));
    }
    let summaries: Vec<SeriesSummary> = scan
        .series
        .iter()
        .map(|(uid, h)| summarize(uid, h))
        .collect();
    let (uid, choice) = match selection {
        SeriesSelection::Uid(uid) => {
            if !scan.series.contains_key(uid) {
                let known: Vec<&str> = summaries.iter().map(|s| s.uid.as_str()).collect();
                return Err(VolumeError::format(
                    dir,
                    format!(
                        "no series {uid} here; the folder holds: {}",
                        known.join(", ")
                    ),
                ));
            }
            (uid.clone(), None)
        }
        // a file given alone is read as the series it belongs to
        SeriesSelection::Rule(rule) if single_file && rule.is_any() => {
            (summaries[0].uid.clone(), None)
        }
        SeriesSelection::Rule(rule) => {
            let facts: Vec<SeriesFacts> = summaries.iter().map(|s| s.facts.clone()).collect();
            let choice = select::choose(dir, &facts, rule)?;
            if summaries.len() > 1 {
                tracing::info!(
                    "{}: {} series; reading {}: {}; passed over: {}",
                    dir.display(),
                    summaries.len(),
                    choice.uid,
                    choice.reason,
                    choice
                        .passed_over
                        .iter()
                        .map(|(u, why)| format!("{u} ({why})"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            (choice.uid.clone(), Some(choice))
        }
    };
    let headers = scan.series.remove(&uid).unwrap_or_default();
    let summary = summarize(&uid, &headers);
    let stack = assemble::assemble(dir, &uid, headers)?;
    let (nx, ny, nz) = (
        stack.slices[0].columns,
        stack.slices[0].rows,
        stack.slices.len(),
    );
    let planes = decode_planes(&stack.slices)?;
    let mut data = Vec::with_capacity(nx * ny * nz);
    for p in planes {
        data.extend(p);
    }
    let data = Array3::from_shape_vec((nz, ny, nx), data)
        .map_err(|e| VolumeError::format(dir, format!("series {uid}: {e}")))?;
    crate::io::check_finite_voxels(dir, &data)?;
    let volume = Volume::new(data, stack.geometry)?;
    let mut dropped = stack.dropped;
    dropped.extend(scan.skipped);
    if !dropped.is_empty() {
        tracing::info!(
            "{}: {} files not used (see -v for each reason)",
            dir.display(),
            dropped.len()
        );
    }
    Ok(DicomSeries {
        series_uid: uid,
        volume,
        summary,
        max_spacing_deviation: stack.max_spacing_deviation,
        dropped,
        choice,
    })
}
