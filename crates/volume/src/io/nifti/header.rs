//! The 348-byte NIfTI-1 header: decoding (either byte order) with validation, and encoding.
//!
//! We parse the header ourselves rather than through the `nifti` crate: every field read from
//! an untrusted file is checked here, once, so later code can index and allocate without
//! panicking (the crate's `qform_affine()` panics on some headers), and writing is
//! byte-for-byte deterministic.

use crate::{Result, VolumeError};
use std::path::Path;

/// Size of a NIfTI-1 header.
pub const HEADER_SIZE: usize = 348;
/// Where voxel data starts in the single-file `.nii` we write (header + 4 extension bytes).
pub const DEFAULT_VOX_OFFSET: usize = 352;
/// `sizeof_hdr` of a NIfTI-2 file (which we recognise in order to refuse it clearly).
const NIFTI2_HEADER_SIZE: i32 = 540;

/// `qform_code`/`sform_code` value meaning "scanner-based anatomical coordinates".
pub const XFORM_SCANNER_ANAT: i16 = 1;
/// Intent code of a displacement vector field (components in RAS; see `write_nifti_displacement`).
pub const INTENT_DISPVECT: i16 = 1006;
/// `xyzt_units`: millimetres and seconds, what ITK writes.
pub const UNITS_MM_SEC: u8 = 2 | 8;

/// The voxel datatypes we read (NIfTI `datatype` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    /// From a NIfTI `datatype` code; `Err` carries a human name for unsupported codes.
    pub fn from_code(code: i16) -> std::result::Result<Self, String> {
        Ok(match code {
            2 => Self::U8,
            4 => Self::I16,
            8 => Self::I32,
            16 => Self::F32,
            64 => Self::F64,
            256 => Self::I8,
            512 => Self::U16,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            32 => return Err("complex64 (datatype 32)".into()),
            128 => return Err("RGB24 (datatype 128)".into()),
            1536 => return Err("float128 (datatype 1536)".into()),
            1792 => return Err("complex128 (datatype 1792)".into()),
            2048 => return Err("complex256 (datatype 2048)".into()),
            2304 => return Err("RGBA32 (datatype 2304)".into()),
            other => return Err(format!("unknown datatype code {other}")),
        })
    }

    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            Self::U8 => 2,
            Self::I16 => 4,
            Self::I32 => 8,
            Self::F32 => 16,
            Self::F64 => 64,
            Self::I8 => 256,
            Self::U16 => 512,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// Short lowercase name (`"int16"`, `"float32"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }
}

/// The header fields we use, decoded and validated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NiftiHeader {
    /// Whether the file was big-endian.
    pub big_endian: bool,
    /// `dim[1..=dim[0]]`, all >= 1 (`dim[0]` in 2..=7, dims beyond the third equal to 1 on read).
    pub dims: Vec<usize>,
    pub datatype: DataType,
    /// `pixdim[0..8]` as stored (`pixdim[0]` is qfac).
    pub pixdim: [f32; 8],
    /// Byte offset of the voxel data.
    pub vox_offset: usize,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub intent_code: i16,
    pub xyzt_units: u8,
    pub descrip: String,
    pub qform_code: i16,
    pub sform_code: i16,
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f32; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f32; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f32; 4]; 3],
}

/// Reads fixed-offset fields in the file's byte order.
struct Fields<'a> {
    b: &'a [u8; HEADER_SIZE],
    be: bool,
}

impl Fields<'_> {
    fn i16(&self, off: usize) -> i16 {
        let x = [self.b[off], self.b[off + 1]];
        if self.be {
            i16::from_be_bytes(x)
        } else {
            i16::from_le_bytes(x)
        }
    }
    fn i32(&self, off: usize) -> i32 {
        let x = [
            self.b[off],
            self.b[off + 1],
            self.b[off + 2],
            self.b[off + 3],
        ];
        if self.be {
            i32::from_be_bytes(x)
        } else {
            i32::from_le_bytes(x)
        }
    }
    fn f32(&self, off: usize) -> f32 {
        f32::from_bits(self.i32(off) as u32)
    }
    fn f32s<const N: usize>(&self, off: usize) -> [f32; N] {
        std::array::from_fn(|i| self.f32(off + 4 * i))
    }
    fn text(&self, off: usize, len: usize) -> String {
        let raw = &self.b[off..off + len];
        let end = raw.iter().position(|&c| c == 0).unwrap_or(len);
        String::from_utf8_lossy(&raw[..end]).trim().to_string()
    }
}

impl NiftiHeader {
    /// Decodes and validates a header. `path` only names the file in errors.
    ///
    /// Refuses: a wrong `sizeof_hdr` (NIfTI-2 is named as such), a bad magic, the two-file
    /// `.hdr/.img` variant, `dim[0]` outside 2..=7, zero or negative dimensions, more than
    /// three non-singleton dimensions, unsupported datatypes, a `bitpix` that disagrees with
    /// the datatype, and a voxel offset that is negative or not finite.
    pub fn decode(path: &Path, b: &[u8; HEADER_SIZE]) -> Result<Self> {
        let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let big_endian = match (le, be) {
            (348, _) => false,
            (_, 348) => true,
            (NIFTI2_HEADER_SIZE, _) | (_, NIFTI2_HEADER_SIZE) => {
                return Err(VolumeError::unsupported(
                    path,
                    "NIfTI-2 files are not supported (convert to NIfTI-1, e.g. with nibabel)",
                ))
            }
            _ => {
                return Err(VolumeError::format(
                    path,
                    format!("not a NIfTI-1 file: header size field is {le}, expected 348"),
                ))
            }
        };
        let f = Fields { b, be: big_endian };
        match &b[344..348] {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err(VolumeError::unsupported(
                    path,
                    "two-file NIfTI (.hdr/.img pair) is not supported; use a single .nii file",
                ))
            }
            m => {
                return Err(VolumeError::format(
                    path,
                    format!("bad NIfTI-1 magic {m:?} (expected \"n+1\\0\"); an ANALYZE 7.5 file?"),
                ))
            }
        }

        let ndim = f.i16(40);
        if !(1..=7).contains(&ndim) {
            return Err(VolumeError::format(
                path,
                format!("dim[0] = {ndim}: the number of dimensions must be 1..=7"),
            ));
        }
        let mut dims = Vec::with_capacity(ndim as usize);
        for i in 1..=ndim as usize {
            let d = f.i16(40 + 2 * i);
            if d <= 0 {
                return Err(VolumeError::format(
                    path,
                    format!("dim[{i}] = {d}: dimensions must be positive"),
                ));
            }
            dims.push(d as usize);
        }
        if ndim < 2 {
            return Err(VolumeError::unsupported(
                path,
                format!("{ndim}-dimensional data; expected a 3D volume"),
            ));
        }

        let code = f.i16(70);
        let datatype = DataType::from_code(code).map_err(|what| {
            VolumeError::unsupported(path, format!("voxel type {what} is not supported"))
        })?;
        let bitpix = f.i16(72);
        if bitpix as i64 != 8 * datatype.size() as i64 {
            return Err(VolumeError::format(
                path,
                format!(
                    "bitpix = {bitpix} disagrees with datatype {} ({} bits)",
                    datatype.name(),
                    8 * datatype.size()
                ),
            ));
        }

        let vox = f.f32(108);
        if !vox.is_finite() || vox < 0.0 || vox > i32::MAX as f32 || vox.fract() != 0.0 {
            return Err(VolumeError::format(
                path,
                format!("vox_offset = {vox} is not a valid byte offset"),
            ));
        }
        // In a single-file NIfTI the data cannot start inside the header; old writers put 0.
        let vox_offset = (vox as usize).max(DEFAULT_VOX_OFFSET);

        Ok(Self {
            big_endian,
            dims,
            datatype,
            pixdim: f.f32s::<8>(76),
            vox_offset,
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            intent_code: f.i16(68),
            xyzt_units: b[123],
            descrip: f.text(148, 80),
            qform_code: f.i16(252),
            sform_code: f.i16(254),
            quatern: f.f32s::<3>(256),
            qoffset: f.f32s::<3>(268),
            srow: [f.f32s::<4>(280), f.f32s::<4>(296), f.f32s::<4>(312)],
        })
    }

    /// Number of voxels (product of all dims), checked for overflow.
    pub fn voxel_count(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Dimensions `[nx, ny, nz]` of a volume, if the data is 3D (dims beyond the third, such
    /// as a single time point, must be 1).
    pub fn dims_xyz(&self) -> Option<[usize; 3]> {
        if self.dims.iter().skip(3).any(|&d| d != 1) {
            return None;
        }
        let d = |i: usize| self.dims.get(i).copied().unwrap_or(1);
        Some([d(0), d(1), d(2)])
    }

    /// Encodes a little-endian single-file (`n+1`) header followed by the 4 zero extension
    /// bytes: exactly [`DEFAULT_VOX_OFFSET`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DEFAULT_VOX_OFFSET];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &348i32.to_le_bytes());
        put(38, b"r"); // `regular`, as ITK and nibabel write it
        put(40, &(self.dims.len() as i16).to_le_bytes());
        for (i, &d) in self.dims.iter().enumerate().take(7) {
            put(42 + 2 * i, &(d as i16).to_le_bytes());
        }
        for i in self.dims.len()..7 {
            put(42 + 2 * i, &1i16.to_le_bytes());
        }
        put(68, &self.intent_code.to_le_bytes());
        put(70, &self.datatype.code().to_le_bytes());
        put(72, &(8 * self.datatype.size() as i16).to_le_bytes());
        for (i, p) in self.pixdim.iter().enumerate() {
            put(76 + 4 * i, &p.to_le_bytes());
        }
        put(108, &(self.vox_offset as f32).to_le_bytes());
        put(112, &self.scl_slope.to_le_bytes());
        put(116, &self.scl_inter.to_le_bytes());
        put(123, &[self.xyzt_units]);
        let descrip = self.descrip.as_bytes();
        put(148, &descrip[..descrip.len().min(79)]);
        put(252, &self.qform_code.to_le_bytes());
        put(254, &self.sform_code.to_le_bytes());
        for i in 0..3 {
            put(256 + 4 * i, &self.quatern[i].to_le_bytes());
            put(268 + 4 * i, &self.qoffset[i].to_le_bytes());
        }
        for (r, row) in self.srow.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put(280 + 16 * r + 4 * c, &v.to_le_bytes());
            }
        }
        put(344, b"n+1\0");
        b
    }
}
