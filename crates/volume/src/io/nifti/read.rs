//! NIfTI-1 reader: `.nii` or gzip-compressed `.nii.gz`, from a file or from bytes.
//!
//! Untrusted input is checked before anything is allocated from it: the header is validated
//! ([`NiftiHeader::decode`]), and the declared data size must fit in what the source can hold
//! (the file length, or for gzip the compressed length times deflate's maximum ratio), so a
//! corrupt header claiming terabytes fails fast instead of exhausting memory.

use super::header::{DataType, NiftiHeader, HEADER_SIZE, INTENT_DISPVECT};
use super::orient::{geometry_from_header, TransformSource};
use crate::{Geometry, Result, Volume, VolumeError};
use flate2::read::MultiGzDecoder;
use ndarray::Array3;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

/// Deflate cannot expand data by more than about 1032:1; add room for the gzip framing.
const GZIP_MAX_RATIO: u64 = 1032;
/// Refuse any volume with more voxels than this (2^31, 8 GiB as float32), whatever the file.
pub const MAX_VOXELS: usize = 1 << 31;

/// A decoded NIfTI-1 image: the volume in float32 (scaling applied) with LPS geometry, plus the
/// header it came from and which transform gave its geometry.
#[derive(Debug, Clone)]
pub struct NiftiImage {
    pub volume: Volume,
    pub header: NiftiHeader,
    pub transform: TransformSource,
}

/// Reads a NIfTI-1 file (`.nii` or `.nii.gz`, detected from the content) into float32.
pub fn read_nifti_file(path: &Path) -> Result<NiftiImage> {
    let mut file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
    let len = file.metadata().map_err(|e| VolumeError::io(path, e))?.len();
    let mut magic = [0u8; 2];
    let gz = match file.read_exact(&mut magic) {
        Ok(()) => magic == [0x1f, 0x8b],
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(VolumeError::io(path, e)),
    };
    let file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
    decode(path, BufReader::with_capacity(1 << 20, file), gz, len)
}

/// Reads a NIfTI-1 image held in memory (plain or gzip); `name` only names it in errors.
pub fn read_nifti_bytes(name: &Path, bytes: &[u8]) -> Result<NiftiImage> {
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    decode(name, bytes, gz, bytes.len() as u64)
}

/// Reads a 3-component displacement field written by
/// [`write_nifti_displacement`](super::write_nifti_displacement) (or by ITK): the grid geometry
/// and `[dx, dy, dz]` in LPS millimetres. Intent DISPVECT (1006) vectors are RAS and are
/// converted, as ITK does; other intents are taken as LPS (ITK's own vector output).
pub fn read_nifti_displacement(path: &Path) -> Result<(Geometry, [Array3<f32>; 3])> {
    let bytes = std::fs::read(path).map_err(|e| VolumeError::io(path, e))?;
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    let (header, values) = decode_raw(path, &bytes[..], gz, bytes.len() as u64)?;
    let d = &header.dims;
    let ok = d.len() == 5 && d[3] == 1 && d[4] == 3;
    if !ok {
        return Err(VolumeError::format(
            path,
            format!("not a displacement field: dims {d:?}, expected [nx, ny, nz, 1, 3]"),
        ));
    }
    let (geometry, _) = geometry_from_header(path, &header)?;
    let (nx, ny, nz) = (d[0], d[1], d[2]);
    let n = nx * ny * nz;
    let sign = if header.intent_code == INTENT_DISPVECT {
        [-1.0f32, -1.0, 1.0]
    } else {
        [1.0; 3]
    };
    let mut comps = Vec::with_capacity(3);
    for (c, s) in sign.iter().enumerate() {
        let part: Vec<f32> = values[c * n..(c + 1) * n].iter().map(|v| v * s).collect();
        comps.push(
            Array3::from_shape_vec((nz, ny, nx), part)
                .map_err(|e| VolumeError::format(path, e.to_string()))?,
        );
    }
    let [dx, dy, dz]: [Array3<f32>; 3] = comps
        .try_into()
        .map_err(|_| VolumeError::format(path, "expected 3 components"))?;
    Ok((geometry, [dx, dy, dz]))
}

/// Header + float32 volume.
fn decode<R: Read>(path: &Path, reader: R, gz: bool, stored_len: u64) -> Result<NiftiImage> {
    let (header, values) = decode_raw(path, reader, gz, stored_len)?;
    let Some([nx, ny, nz]) = header.dims_xyz() else {
        return Err(VolumeError::unsupported(
            path,
            format!(
                "data has dimensions {:?}; only 3D volumes are supported (a 4th dimension of 1 is fine)",
                header.dims
            ),
        ));
    };
    let (geometry, transform) = geometry_from_header(path, &header)?;
    let data = Array3::from_shape_vec((nz, ny, nx), values)
        .map_err(|e| VolumeError::format(path, format!("voxel data: {e}")))?;
    tracing::debug!(
        "{}: {} [{nx}, {ny}, {nz}] {} gzip={gz}, geometry from {transform:?}, slope {} inter {}",
        path.display(),
        header.datatype.name(),
        if header.big_endian {
            "big-endian"
        } else {
            "little-endian"
        },
        header.scl_slope,
        header.scl_inter
    );
    crate::io::check_finite_voxels(path, &data)?;
    let volume =
        Volume::new(data, geometry).map_err(|e| VolumeError::format(path, e.to_string()))?;
    Ok(NiftiImage {
        volume,
        header,
        transform,
    })
}

/// Turns a read error into one that says what was being read.
fn read_error(path: &Path, gz: bool, what: &str, e: std::io::Error) -> VolumeError {
    match e.kind() {
        ErrorKind::UnexpectedEof => {
            VolumeError::format(path, format!("truncated file: it ends inside the {what}"))
        }
        ErrorKind::InvalidInput | ErrorKind::InvalidData if gz => {
            VolumeError::format(path, format!("corrupt gzip data in the {what}: {e}"))
        }
        _ => VolumeError::io(path, e),
    }
}

/// Validated header and all voxel values in file order (x fastest), scaling applied.
fn decode_raw<R: Read>(
    path: &Path,
    reader: R,
    gz: bool,
    stored_len: u64,
) -> Result<(NiftiHeader, Vec<f32>)> {
    let mut reader: Box<dyn Read + '_> = if gz {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut hbuf = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut hbuf)
        .map_err(|e| read_error(path, gz, "348-byte NIfTI-1 header", e))?;
    let header = NiftiHeader::decode(path, &hbuf)?;

    // Size checks before any allocation driven by the header.
    let dt = header.datatype;
    let nvox = header
        .voxel_count()
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(|| {
            VolumeError::format(
                path,
                format!(
                    "declared dimensions {:?} exceed the limit of {MAX_VOXELS} voxels",
                    header.dims
                ),
            )
        })?;
    let nbytes = nvox * dt.size();
    let capacity = if gz {
        stored_len.saturating_mul(GZIP_MAX_RATIO)
    } else {
        stored_len
    };
    let needed = header.vox_offset as u64 + nbytes as u64;
    if needed > capacity {
        return Err(VolumeError::format(
            path,
            if gz {
                format!(
                    "header declares {nbytes} bytes of voxel data ({:?} {}), more than {stored_len} compressed bytes can hold",
                    header.dims,
                    dt.name()
                )
            } else {
                format!(
                    "truncated file or corrupt header: dimensions {:?} of {} need {needed} bytes, the file has {stored_len}",
                    header.dims,
                    dt.name()
                )
            },
        ));
    }

    // Extensions (or padding) between the header and the data are skipped.
    let skip = (header.vox_offset - HEADER_SIZE) as u64;
    let skipped = std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())
        .map_err(|e| read_error(path, gz, "header extensions", e))?;
    if skipped != skip {
        return Err(VolumeError::format(
            path,
            "truncated file: it ends before the voxel data",
        ));
    }
    let mut raw = vec![0u8; nbytes];
    reader
        .read_exact(&mut raw)
        .map_err(|e| read_error(path, gz, "voxel data", e))?;
    let values = to_f32(&raw, dt, header.big_endian, scaling(&header));
    Ok((header, values))
}

/// `(slope, inter)` to apply, or `None`: NIfTI says a zero (or non-finite) slope means none.
fn scaling(h: &NiftiHeader) -> Option<(f32, f32)> {
    let (s, i) = (h.scl_slope, h.scl_inter);
    if s == 0.0 || !s.is_finite() || (s == 1.0 && (i == 0.0 || !i.is_finite())) {
        return None;
    }
    Some((s, if i.is_finite() { i } else { 0.0 }))
}

/// Decodes `N`-byte values in the file's byte order.
macro_rules! decode_as {
    ($raw:expr, $t:ty, $be:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        $raw.chunks_exact(N).map(move |c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            if $be {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        })
    }};
}

/// Raw bytes to float32 with optional `value * slope + inter`. The arithmetic is done in
/// float32 (float64 for float64 data), as ITK does when it reads into a float image.
fn to_f32(raw: &[u8], dt: DataType, be: bool, scale: Option<(f32, f32)>) -> Vec<f32> {
    let (s, i) = scale.unwrap_or((1.0, 0.0));
    let apply = |v: f32| if scale.is_some() { v * s + i } else { v };
    match dt {
        DataType::U8 => raw.iter().map(|&v| apply(v as f32)).collect(),
        DataType::I8 => raw.iter().map(|&v| apply(v as i8 as f32)).collect(),
        DataType::I16 => decode_as!(raw, i16, be).map(|v| apply(v as f32)).collect(),
        DataType::U16 => decode_as!(raw, u16, be).map(|v| apply(v as f32)).collect(),
        DataType::I32 => decode_as!(raw, i32, be).map(|v| apply(v as f32)).collect(),
        DataType::U32 => decode_as!(raw, u32, be).map(|v| apply(v as f32)).collect(),
        DataType::I64 => decode_as!(raw, i64, be).map(|v| apply(v as f32)).collect(),
        DataType::U64 => decode_as!(raw, u64, be).map(|v| apply(v as f32)).collect(),
        DataType::F32 => decode_as!(raw, f32, be).map(apply).collect(),
        DataType::F64 => decode_as!(raw, f64, be)
            .map(|v| {
                if scale.is_some() {
                    (v * s as f64 + i as f64) as f32
                } else {
                    v as f32
                }
            })
            .collect(),
    }
}
