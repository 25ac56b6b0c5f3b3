//! Turning one series' slice headers into an ordered stack with ITK's geometry.
//!
//! Mirrors what SimpleITK's `ImageSeriesReader` (GDCM's IPP sorter) does: slices are sorted by
//! ImagePositionPatient projected on the slice normal (row cosine × column cosine), ascending;
//! origin = first slice's position; direction columns = row cosine, column cosine, normal;
//! spacing = (PixelSpacing[1], PixelSpacing[0], distance between the first two slices). On top
//! of that we refuse what ITK only warns about: non-uniform slice spacing (missing slices) and
//! duplicate positions, since either would silently distort the volume.
#![allow(clippy::needless_range_loop)]

use super::scan::SliceHeader;
use crate::{Geometry, Result, VolumeError};
use std::path::Path;

/// Allowed deviation of any slice gap from the first gap: 1% of it, at least 0.01 mm.
fn spacing_tolerance(spacing: f64) -> f64 {
    (0.01 * spacing).max(0.01)
}

/// An ordered stack of slices ready for pixel decoding.
#[derive(Debug, Clone)]
pub struct Stack {
    pub slices: Vec<SliceHeader>,
    pub geometry: Geometry,
    /// Largest |gap − spacing| between consecutive slices (mm).
    pub max_spacing_deviation: f64,
    /// Files left out, with the reason.
    pub dropped: Vec<(std::path::PathBuf, String)>,
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Rows, columns and orientation (in units of 1e-4).
type FrameKey = (usize, usize, [i64; 6]);

/// The key that slices of one volume share: size and orientation (rounded to 1e-4).
fn frame_key(s: &SliceHeader) -> FrameKey {
    let o = s.orientation.unwrap_or_default();
    (s.rows, s.columns, o.map(|v| (v * 1e4).round() as i64))
}

/// Orders and checks one series' slices. `dir` names the folder in errors.
pub fn assemble(dir: &Path, series_uid: &str, headers: Vec<SliceHeader>) -> Result<Stack> {
    let mut dropped = Vec::new();
    let mut slices = Vec::new();
    for h in headers {
        if h.image_type.iter().any(|t| t == "LOCALIZER") {
            tracing::debug!("{}: dropped: localizer (ImageType)", h.path.display());
            dropped.push((h.path, "localizer image".to_string()));
        } else if h.number_of_frames > 1 && h.frame.is_none() {
            return Err(VolumeError::unsupported(
                &h.path,
                format!(
                    "multi-frame image ({} frames) without per-frame functional groups: only \
                     enhanced multi-frame images (Enhanced CT, Legacy Converted Enhanced CT) \
                     can be placed frame by frame",
                    h.number_of_frames
                ),
            ));
        } else if h.position.is_none() || h.orientation.is_none() {
            return Err(VolumeError::format(
                &h.path,
                "no ImagePositionPatient/ImageOrientationPatient: cannot place the slice",
            ));
        } else {
            slices.push(h);
        }
    }
    if slices.is_empty() {
        return Err(VolumeError::format(
            dir,
            format!("series {series_uid} has no image slices (only localizers)"),
        ));
    }

    // Keep the slices sharing the majority size + orientation; a clear majority lets us drop
    // stray outliers (e.g. a reformat in the same series), a tie is an inconsistent series.
    let mut counts: Vec<(FrameKey, usize)> = Vec::new();
    for s in &slices {
        let k = frame_key(s);
        match counts.iter_mut().find(|(key, _)| *key == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    if counts.len() > 1 {
        if counts[0].1 == counts[1].1 {
            let (r0, c0, _) = counts[0].0;
            let (r1, c1, _) = counts[1].0;
            return Err(VolumeError::format(
                dir,
                format!(
                    "series {series_uid} has inconsistent slices: {} of {r0}x{c0} and {} of {r1}x{c1} (rows x columns) or different orientations",
                    counts[0].1, counts[1].1
                ),
            ));
        }
        let keep = counts[0].0;
        let (mut kept, outliers): (Vec<_>, Vec<_>) =
            slices.into_iter().partition(|s| frame_key(s) == keep);
        for s in outliers {
            let why = format!(
                "size {}x{} or orientation differs from the series' {}x{}",
                s.rows, s.columns, keep.0, keep.1
            );
            tracing::debug!("{}: dropped: {why}", s.path.display());
            dropped.push((s.path, why));
        }
        slices = std::mem::take(&mut kept);
    }

    let o = slices[0].orientation.unwrap_or_default();
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    let normal = cross(row, col);
    let n_norm = dot(normal, normal).sqrt();
    if !(0.9..=1.1).contains(&n_norm) {
        return Err(VolumeError::format(
            &slices[0].path,
            format!("ImageOrientationPatient {o:?} is not two orthogonal unit vectors"),
        ));
    }
    let normal = normal.map(|v| v / n_norm);

    let pos = |s: &SliceHeader| s.position.unwrap_or_default();
    slices.sort_by(|a, b| dot(pos(a), normal).total_cmp(&dot(pos(b), normal)));
    let first = &slices[0];
    let proj: Vec<f64> = slices.iter().map(|s| dot(pos(s), normal)).collect();
    tracing::debug!(
        "series {series_uid}: {} slices sorted along normal {normal:?}, from {:.3} to {:.3} mm",
        slices.len(),
        proj[0],
        proj[proj.len() - 1]
    );

    let mut spacing_z = 1.0;
    let mut max_dev = 0.0f64;
    if slices.len() > 1 {
        let d = |i: usize| {
            let (a, b) = (pos(&slices[i]), pos(&slices[i + 1]));
            ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2) + (b[2] - a[2]).powi(2)).sqrt()
        };
        spacing_z = d(0);
        for i in 0..slices.len() - 1 {
            let gap = proj[i + 1] - proj[i];
            if gap.abs() < 1e-6 {
                return Err(VolumeError::format(
                    dir,
                    format!(
                        "two slices at the same position: {} and {} (several acquisitions in one series?)",
                        slices[i].path.display(),
                        slices[i + 1].path.display()
                    ),
                ));
            }
            max_dev = max_dev.max((d(i) - spacing_z).abs());
        }
        if max_dev > spacing_tolerance(spacing_z) {
            return Err(VolumeError::format(
                dir,
                format!(
                    "series {series_uid}: slice spacing is not uniform (first gap {spacing_z:.4} mm, max deviation {max_dev:.4} mm): missing slices?"
                ),
            ));
        }
    } else if let Some(t) = first.spacing_between_slices.filter(|t| *t > 0.0) {
        // One slice: GDCM (hence SimpleITK) takes SpacingBetweenSlices, else 1 mm.
        spacing_z = t;
    }
    tracing::debug!(
        "series {series_uid}: slice spacing {spacing_z:.4} mm, max deviation {max_dev:.2e} mm"
    );

    let ps = first.pixel_spacing.unwrap_or_else(|| {
        tracing::debug!("{}: no PixelSpacing, using 1 mm", first.path.display());
        [1.0, 1.0]
    });
    let mut direction = [[0.0; 3]; 3];
    for r in 0..3 {
        direction[r] = [row[r], col[r], normal[r]];
    }
    let geometry = Geometry {
        spacing: [ps[1], ps[0], spacing_z],
        origin: pos(first),
        direction,
    };
    geometry
        .validate()
        .map_err(|e| VolumeError::format(dir, format!("series {series_uid}: {e}")))?;
    Ok(Stack {
        slices,
        geometry,
        max_spacing_deviation: max_dev,
        dropped,
    })
}
