//! NIfTI's RAS qform/sform to ITK's LPS geometry and back.
//!
//! NIfTI maps voxel indices to RAS+ world coordinates (+x = patient Right, +y = Anterior,
//! +z = Superior); ITK and DICOM use LPS+ (+x = Left, +y = Posterior, +z = Superior). The two
//! differ by the sign of the first two world axes, so `direction_lps = diag(-1, -1, 1) · R_ras`
//! and `origin_lps = (-ox, -oy, oz)`.
//!
//! Which transform we read follows ITK 5.4's `NiftiImageIO` (checked with SimpleITK 2.5 on
//! headers built with nibabel, see `tools/golden/volume_io.py`):
//! - the sform is used when `sform_code` is SCANNER_ANAT (1), or when it is any non-zero code
//!   and there is no qform; its columns are normalised to give the direction (ITK ignores
//!   scales in the sform). A sform that is not a rotation up to column scales falls back to the
//!   qform if there is one, and is an error otherwise;
//! - otherwise the qform (quaternion + qfac in `pixdim[0]` + offset) is used when
//!   `qform_code` > 0;
//! - with neither, the geometry is the identity at the origin (ITK's behaviour for such files).
//!
//! In all cases the spacing is `|pixdim[1..=3]|`, as ITK does, not the sform's column norms.

// Matrix code reads best with explicit row/column indices.
#![allow(clippy::needless_range_loop)]

use super::header::{NiftiHeader, XFORM_SCANNER_ANAT};
use crate::{Geometry, Result, VolumeError};
use std::path::Path;

/// How the geometry of a file was decided (logged, and reported by `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransformSource {
    Sform,
    Qform,
    /// No transform in the file: identity direction at the origin.
    None,
}

/// Tolerance on the dot products of normalised sform columns for them to count as orthogonal.
const ORTHO_TOL: f64 = 1e-4;

/// RAS <-> LPS: flip the first two world axes.
const FLIP: [f64; 3] = [-1.0, -1.0, 1.0];

/// The voxel sizes a header may state (mm): anything else is refused.
pub const MIN_SPACING_MM: f64 = 1e-3;
pub const MAX_SPACING_MM: f64 = 1e4;

/// The LPS geometry of a NIfTI header, following ITK's choice of transform.
pub fn geometry_from_header(path: &Path, h: &NiftiHeader) -> Result<(Geometry, TransformSource)> {
    let ndim = h.dims.len();
    let mut spacing = [1.0f64; 3];
    for (i, s) in spacing.iter_mut().enumerate() {
        if i < ndim {
            let p = h.pixdim[i + 1].abs() as f64;
            // a voxel under a micrometre or over ten metres is a broken header (a NaN or a
            // subnormal float), not a scan
            if !(MIN_SPACING_MM..=MAX_SPACING_MM).contains(&p) {
                return Err(VolumeError::format(
                    path,
                    format!(
                        "pixdim[{}] = {} is not a valid voxel size",
                        i + 1,
                        h.pixdim[i + 1]
                    ),
                ));
            }
            *s = p;
        }
    }

    let prefer_sform =
        h.sform_code == XFORM_SCANNER_ANAT || (h.sform_code > 0 && h.qform_code <= 0);
    if prefer_sform {
        match sform_rotation(h) {
            Ok((rot, offset)) => {
                tracing::debug!(
                    "{}: geometry from the sform (sform_code {}, qform_code {})",
                    path.display(),
                    h.sform_code,
                    h.qform_code
                );
                return Ok((to_lps(spacing, rot, offset, path)?, TransformSource::Sform));
            }
            Err(why) if h.qform_code > 0 => {
                tracing::debug!(
                    "{}: sform unusable ({why}); falling back to the qform",
                    path.display()
                );
            }
            Err(why) => {
                return Err(VolumeError::unsupported(
                    path,
                    format!("sform is not a rotation with scales ({why}) and there is no qform"),
                ))
            }
        }
    }
    if h.qform_code > 0 {
        let (rot, offset) = qform_rotation(h)?;
        tracing::debug!(
            "{}: geometry from the qform (qform_code {}, sform_code {})",
            path.display(),
            h.qform_code,
            h.sform_code
        );
        return Ok((to_lps(spacing, rot, offset, path)?, TransformSource::Qform));
    }
    tracing::debug!(
        "{}: neither qform nor sform set; identity direction at the origin",
        path.display()
    );
    let g = Geometry::identity(spacing);
    Ok((g, TransformSource::None))
}

/// Direction (RAS, columns = index axes) and offset of the sform, or why it is not usable.
fn sform_rotation(h: &NiftiHeader) -> std::result::Result<([[f64; 3]; 3], [f64; 3]), String> {
    let mut rot = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let norm = (0..3)
            .map(|r| (h.srow[r][c] as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(format!("column {c} has norm {norm}"));
        }
        for r in 0..3 {
            rot[r][c] = h.srow[r][c] as f64 / norm;
        }
    }
    for a in 0..3 {
        for b in (a + 1)..3 {
            let dot: f64 = (0..3).map(|r| rot[r][a] * rot[r][b]).sum();
            if dot.abs() > ORTHO_TOL {
                return Err(format!(
                    "columns {a} and {b} are not orthogonal (cos = {dot:.2e})"
                ));
            }
        }
    }
    let offset = [
        h.srow[0][3] as f64,
        h.srow[1][3] as f64,
        h.srow[2][3] as f64,
    ];
    if offset.iter().any(|o| !o.is_finite()) {
        return Err("offset is not finite".into());
    }
    Ok((rot, offset))
}

/// Rotation (RAS, with qfac applied to the third column) and offset of the qform.
fn qform_rotation(h: &NiftiHeader) -> Result<([[f64; 3]; 3], [f64; 3])> {
    let [b, c, d] = h.quatern.map(|q| q as f64);
    let [mut b, mut c, mut d] = [b, c, d];
    let sum = b * b + c * c + d * d;
    if !sum.is_finite() {
        return Err(VolumeError::invalid("qform quaternion is not finite"));
    }
    let a = if 1.0 - sum < 1e-7 {
        // |(b,c,d)| >= 1: a 180-degree rotation; renormalise (b, c, d), as nifti1_io does.
        let n = sum.sqrt();
        b /= n;
        c /= n;
        d /= n;
        0.0
    } else {
        (1.0 - sum).sqrt()
    };
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let mut rot = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    for row in rot.iter_mut() {
        row[2] *= qfac;
    }
    let offset = h.qoffset.map(|o| o as f64);
    Ok((rot, offset))
}

fn to_lps(
    spacing: [f64; 3],
    rot: [[f64; 3]; 3],
    offset: [f64; 3],
    path: &Path,
) -> Result<Geometry> {
    let mut direction = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            direction[r][c] = FLIP[r] * rot[r][c];
        }
    }
    let origin = [
        FLIP[0] * offset[0],
        FLIP[1] * offset[1],
        FLIP[2] * offset[2],
    ];
    let g = Geometry {
        spacing,
        origin,
        direction,
    };
    g.validate()
        .map_err(|e| VolumeError::format(path, format!("invalid geometry: {e}")))?;
    Ok(g)
}

/// The header transform fields ITK writes for an LPS geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XformFields {
    /// `pixdim[0]` (qfac, ±1) and `pixdim[1..=3]` (spacing).
    pub pixdim: [f32; 4],
    pub quatern: [f32; 3],
    pub qoffset: [f32; 3],
    pub srow: [[f32; 4]; 3],
}

/// qform and sform (both to be written with code SCANNER_ANAT) for `g`, the way ITK writes
/// them: sform = RAS direction · diag(spacing) with the RAS origin; qform = the quaternion of the
/// RAS direction (a reflection moved into qfac = -1).
pub fn xform_fields(g: &Geometry) -> XformFields {
    let mut ras = [[0.0f64; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            ras[r][c] = FLIP[r] * g.direction[r][c];
        }
    }
    let origin = [
        FLIP[0] * g.origin[0],
        FLIP[1] * g.origin[1],
        FLIP[2] * g.origin[2],
    ];
    let mut srow = [[0.0f32; 4]; 3];
    for r in 0..3 {
        for c in 0..3 {
            srow[r][c] = (ras[r][c] * g.spacing[c]) as f32;
        }
        srow[r][3] = origin[r] as f32;
    }
    let (quatern, qfac) = quaternion_of(ras);
    XformFields {
        pixdim: [
            qfac as f32,
            g.spacing[0] as f32,
            g.spacing[1] as f32,
            g.spacing[2] as f32,
        ],
        quatern: quatern.map(|q| q as f32),
        qoffset: origin.map(|o| o as f32),
        srow,
    }
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// `(b, c, d)` and qfac of an orthonormal matrix (the NIfTI-1 standard's construction: a
/// reflection is moved into qfac by negating the third column; `a` is kept non-negative).
fn quaternion_of(mut m: [[f64; 3]; 3]) -> ([f64; 3], f64) {
    let qfac = if det3(&m) < 0.0 {
        for row in m.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let (r11, r12, r13) = (m[0][0], m[0][1], m[0][2]);
    let (r21, r22, r23) = (m[1][0], m[1][1], m[1][2]);
    let (r31, r32, r33) = (m[2][0], m[2][1], m[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (a, b, c, d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
    }
    let q = if a < 0.0 { [-b, -c, -d] } else { [b, c, d] };
    (q, qfac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::nifti::header::{DataType, NiftiHeader};

    fn header_with(x: &XformFields, qcode: i16, scode: i16) -> NiftiHeader {
        NiftiHeader {
            big_endian: false,
            dims: vec![4, 5, 6],
            datatype: DataType::F32,
            pixdim: [
                x.pixdim[0],
                x.pixdim[1],
                x.pixdim[2],
                x.pixdim[3],
                0.0,
                0.0,
                0.0,
                0.0,
            ],
            vox_offset: 352,
            scl_slope: 1.0,
            scl_inter: 0.0,
            intent_code: 0,
            xyzt_units: 10,
            descrip: String::new(),
            qform_code: qcode,
            sform_code: scode,
            quatern: x.quatern,
            qoffset: x.qoffset,
            srow: x.srow,
        }
    }

    /// Every proper and improper axis permutation with sign flips, plus an oblique rotation:
    /// LPS -> (qform, sform) -> LPS is the identity, through either transform.
    #[test]
    fn round_trip_through_qform_and_sform() {
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let mut dirs = Vec::new();
        for p in perms {
            for signs in 0..8 {
                let mut d = [[0.0; 3]; 3];
                for c in 0..3 {
                    d[p[c]][c] = if signs >> c & 1 == 1 { -1.0 } else { 1.0 };
                }
                dirs.push(d);
            }
        }
        let (s, c) = (0.4f64.sin(), 0.4f64.cos());
        dirs.push([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]);
        for d in dirs {
            let g = Geometry {
                spacing: [0.75, 0.5, 2.5],
                origin: [-120.5, 33.25, 410.0],
                direction: d,
            };
            let x = xform_fields(&g);
            for (q, s) in [(1, 0), (0, 1)] {
                let h = header_with(&x, q, s);
                let (back, src) = geometry_from_header(Path::new("t.nii"), &h).unwrap();
                assert_ne!(src, TransformSource::None);
                assert!(back.approx_eq(&g, 1e-5), "{src:?}: {back:?} vs {g:?}");
            }
        }
    }

    #[test]
    fn itk_choice_of_transform() {
        let g1 = Geometry::identity([1.0; 3]);
        let mut g2 = g1;
        g2.origin = [10.0, 20.0, 30.0];
        let (x1, x2) = (xform_fields(&g1), xform_fields(&g2));
        let mut h = header_with(&x2, 1, 1);
        h.srow = x1.srow;
        let p = Path::new("t.nii");
        // sform_code 1 wins over the qform.
        assert_eq!(geometry_from_header(p, &h).unwrap().0.origin, [0.0; 3]);
        // sform_code 2 with a qform: ITK takes the qform.
        h.sform_code = 2;
        assert_eq!(
            geometry_from_header(p, &h).unwrap().0.origin,
            [10.0, 20.0, 30.0]
        );
        // sform_code 2 without a qform: the sform.
        h.qform_code = 0;
        assert_eq!(geometry_from_header(p, &h).unwrap().0.origin, [0.0; 3]);
        // A sheared sform with no qform is refused; with a qform, the qform is used.
        h.srow[0][1] = 0.5;
        assert!(geometry_from_header(p, &h).is_err());
        h.qform_code = 1;
        h.sform_code = 1;
        assert_eq!(
            geometry_from_header(p, &h).unwrap().1,
            TransformSource::Qform
        );
    }
}
