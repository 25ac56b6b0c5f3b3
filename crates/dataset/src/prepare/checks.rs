//! Per-pair geometry checks and the common grid.
//!
//! Before any voxel is resampled, a pair must look like two chest CTs of one patient in one
//! coordinate system: both 3D, acquired axially (training reads axial slices), with slice
//! axes that agree, and boxes that overlap in patient space. Each failure names both files,
//! because the fix is usually "this is the wrong file" and the user has to see which.

use crate::manifest::SpacingMode;
use std::path::Path;
use volume::resample::Grid;
use volume::Volume;

/// Smallest size along any axis of a usable volume.
pub const MIN_SIZE: usize = 2;
/// Most angle (degrees) between the NCCT's and the CTPA's slice normals. Rigid alignment
/// corrects a few degrees of patient rotation; more than this means another orientation or
/// another scan.
pub const MAX_NORMAL_ANGLE_DEG: f64 = 30.0;
/// Most angle (degrees) between the NCCT's slice normal and the patient's head-feet (LPS z)
/// axis: beyond 45° the "axial" slices training reads would be coronal or sagittal.
pub const MAX_AXIAL_TILT_DEG: f64 = 45.0;
/// Least overlap of the two boxes in patient space, as a fraction of the smaller box.
pub const MIN_OVERLAP: f64 = 0.25;

/// A geometry problem with a pair.
#[derive(Debug, thiserror::Error)]
#[error("{ncct} and {ctpa}: {message}")]
pub struct PairGeometryError {
    pub ncct: String,
    pub ctpa: String,
    pub message: String,
}

fn slice_normal<T>(v: &Volume<T>) -> [f64; 3] {
    let d = v.geometry.direction;
    [d[0][2], d[1][2], d[2][2]]
}

fn angle_deg(a: [f64; 3], b: [f64; 3]) -> f64 {
    let dot: f64 = (0..3).map(|i| a[i] * b[i]).sum();
    dot.clamp(-1.0, 1.0).acos().to_degrees()
}

/// Axis-aligned bounding box (LPS mm) of the voxel centres.
fn bounding_box<T>(v: &Volume<T>) -> ([f64; 3], [f64; 3]) {
    let [nx, ny, nz] = v.size_xyz();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for corner in 0..8 {
        let idx = [
            if corner & 1 == 0 {
                0.0
            } else {
                nx as f64 - 1.0
            },
            if corner & 2 == 0 {
                0.0
            } else {
                ny as f64 - 1.0
            },
            if corner & 4 == 0 {
                0.0
            } else {
                nz as f64 - 1.0
            },
        ];
        let p = v.geometry.index_to_point(idx);
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    (lo, hi)
}

/// Overlap of the two boxes as a fraction of the smaller one (each box padded by half a voxel
/// so single-slice extents do not vanish).
pub fn overlap_fraction<T, U>(a: &Volume<T>, b: &Volume<U>) -> f64 {
    let pad = |v: [f64; 3], s: [f64; 3], sign: f64| [0, 1, 2].map(|i| v[i] + sign * s[i] / 2.0);
    let (alo, ahi) = bounding_box(a);
    let (blo, bhi) = bounding_box(b);
    let (alo, ahi) = (
        pad(alo, a.geometry.spacing, -1.0),
        pad(ahi, a.geometry.spacing, 1.0),
    );
    let (blo, bhi) = (
        pad(blo, b.geometry.spacing, -1.0),
        pad(bhi, b.geometry.spacing, 1.0),
    );
    let vol =
        |lo: [f64; 3], hi: [f64; 3]| (0..3).map(|i| (hi[i] - lo[i]).max(0.0)).product::<f64>();
    let inter = vol(
        [0, 1, 2].map(|i| alo[i].max(blo[i])),
        [0, 1, 2].map(|i| ahi[i].min(bhi[i])),
    );
    let smaller = vol(alo, ahi).min(vol(blo, bhi));
    if smaller > 0.0 {
        inter / smaller
    } else {
        0.0
    }
}

/// Checks that `ncct` and `ctpa` (read from the two paths) can be prepared together.
pub fn check_pair(
    ncct: &Volume,
    ctpa: &Volume,
    ncct_path: &Path,
    ctpa_path: &Path,
) -> Result<(), PairGeometryError> {
    let err = |message: String| PairGeometryError {
        ncct: ncct_path.display().to_string(),
        ctpa: ctpa_path.display().to_string(),
        message,
    };
    for (name, v) in [("NCCT", ncct), ("CTPA", ctpa)] {
        let s = v.size_xyz();
        if s.iter().any(|&n| n < MIN_SIZE) {
            return Err(err(format!(
                "the {name} is not a 3D volume: size (x, y, z) = {s:?} (each axis needs at least {MIN_SIZE} voxels)"
            )));
        }
        v.geometry
            .validate()
            .map_err(|e| err(format!("the {name} has an invalid geometry: {e}")))?;
    }
    let tilt = angle_deg(slice_normal(ncct), [0.0, 0.0, 1.0]);
    let tilt = tilt.min(180.0 - tilt);
    if tilt > MAX_AXIAL_TILT_DEG {
        return Err(err(format!(
            "the NCCT's slice axis is {tilt:.0}° from the head-feet axis (direction {:?}); training reads axial slices, so the volume must be stored axially (reorient it first)",
            ncct.geometry.direction
        )));
    }
    let between = angle_deg(slice_normal(ncct), slice_normal(ctpa));
    if between > MAX_NORMAL_ANGLE_DEG {
        return Err(err(format!(
            "the slice axes differ by {between:.0}° (more than {MAX_NORMAL_ANGLE_DEG}°): not the same orientation, or not the same patient"
        )));
    }
    let overlap = overlap_fraction(ncct, ctpa);
    if overlap < MIN_OVERLAP {
        return Err(err(format!(
            "the volumes overlap by {:.0}% in patient space (need {:.0}%): different coordinate systems, or not the same body region",
            overlap * 100.0,
            MIN_OVERLAP * 100.0
        )));
    }
    Ok(())
}

/// The grid both volumes of a pair are resampled to (see [`SpacingMode`]): always the NCCT's
/// orientation, origin and field of view.
pub fn target_grid(ncct: &Volume, ctpa: &Volume, mode: SpacingMode) -> Grid {
    let own = Grid::of(ncct);
    match mode {
        SpacingMode::Auto => {
            let s = ncct.geometry.spacing;
            let dz = s[2].max(ctpa.geometry.spacing[2]);
            if dz > s[2] {
                own.with_spacing([s[0], s[1], dz])
            } else {
                own
            }
        }
        SpacingMode::Fixed(s) => own.with_spacing(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use volume::Geometry;

    fn vol(shape: (usize, usize, usize), geometry: Geometry) -> Volume {
        Volume::new(Array3::zeros(shape), geometry).unwrap()
    }

    #[test]
    fn overlap_of_shifted_boxes() {
        let g = Geometry::identity([1.0; 3]);
        let a = vol((10, 10, 10), g);
        let mut g2 = g;
        g2.origin = [5.0, 0.0, 0.0];
        let b = vol((10, 10, 10), g2);
        assert!((overlap_fraction(&a, &b) - 0.5).abs() < 1e-9);
        g2.origin = [50.0, 0.0, 0.0];
        assert_eq!(overlap_fraction(&a, &vol((10, 10, 10), g2)), 0.0);
    }

    #[test]
    fn rejects_flat_disjoint_and_sagittal_pairs_naming_both_files() {
        let g = Geometry::identity([1.0; 3]);
        let a = vol((10, 10, 10), g);
        let (pa, pb) = (Path::new("ncct/a.nii.gz"), Path::new("ctpa/a.nii.gz"));
        check_pair(&a, &a, pa, pb).unwrap();

        let flat = vol((1, 10, 10), g);
        let e = check_pair(&a, &flat, pa, pb).unwrap_err().to_string();
        assert!(
            e.contains("ncct/a.nii.gz") && e.contains("ctpa/a.nii.gz") && e.contains("3D"),
            "{e}"
        );

        let mut far = g;
        far.origin = [0.0, 0.0, 500.0];
        let e = check_pair(&a, &vol((10, 10, 10), far), pa, pb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");

        // Slice axis along x (a sagittal stack): columns permuted.
        let mut sag = g;
        sag.direction = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];
        let e = check_pair(&vol((10, 10, 10), sag), &a, pa, pb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("axial"), "{e}");
    }

    #[test]
    fn auto_grid_keeps_ncct_in_plane_and_takes_coarser_slices() {
        let mut gn = Geometry::identity([0.7, 0.7, 1.0]);
        gn.origin = [-100.0, -90.0, 10.0];
        let n = vol((100, 64, 64), gn);
        let c = vol((40, 64, 64), Geometry::identity([0.8, 0.8, 2.5]));
        let g = target_grid(&n, &c, SpacingMode::Auto);
        assert_eq!(g.geometry.spacing, [0.7, 0.7, 2.5]);
        assert_eq!(g.size_xyz, [64, 64, 40]);
        assert_eq!(g.geometry.origin, gn.origin);
        // A finer CTPA leaves the NCCT's grid untouched.
        let c = vol((200, 64, 64), Geometry::identity([0.8, 0.8, 0.5]));
        assert_eq!(target_grid(&n, &c, SpacingMode::Auto), Grid::of(&n));
    }
}
