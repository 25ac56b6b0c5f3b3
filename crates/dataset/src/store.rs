//! The prepared slice store: what training reads, at random, many thousand slices a second.
//!
//! # On-disk format (format version 1)
//!
//! ```text
//! PREPARED/
//!   manifest.json        see crate::manifest (format, version, window, settings, cases, split)
//!   split.json           the split as a split file {"CASE": "train"|"val"|"test"}
//!   cases/CASE/
//!     meta.json          this case's CaseMeta (grid, sources + SHA-256, alignment, masks)
//!     ncct.i16           NCCT in HU, i16 little-endian, C order [z, y, x], no header
//!     ctpa.i16           CTPA in HU, same grid
//!     body.u8            body mask, 0/1, same grid
//!     lung.u8            lung mask, 0/1, same grid
//! ```
//!
//! Why this shape:
//! - **Raw arrays, memory-mapped.** An axial slice `z` is one contiguous run of `ny * nx`
//!   values at byte offset `z * ny * nx * itemsize`, so reading a random slice is a page-cache
//!   copy with no decoding and no seeking logic; the OS caches hot cases across epochs and
//!   across the loader threads. Compressed chunks (NIfTI.gz, zstd) would cost a decode per
//!   slice read; `examples/store_bench.rs` measures what the raw layout gives.
//! - **i16 HU.** CT is integer HU by construction (DICOM stores integers); after resampling the
//!   values are rounded to the nearest HU (error <= 0.5 HU, far below CT noise), at half the
//!   size of f32. Values are stored unwindowed, so the HU window is applied on read and can be
//!   changed without re-preparing, and whole-volume validation gets true HU.
//! - **No headers.** The shape and geometry live in `meta.json` and the manifest; the file
//!   length is checked against the shape when the dataset is opened, so a truncated store is
//!   refused up front rather than found mid-training.
//! - **A case folder is written whole, then renamed into place** (`util::atomic`), so a
//!   store that exists is complete. Replacing a case renames a new folder in; readers that have
//!   the old files mapped keep reading the old inodes, so re-preparing never corrupts a
//!   running training's view (it just won't see the change until it reopens).

use crate::manifest::{
    CaseEntry, CaseMeta, IntensityWindow, Manifest, ManifestStatus, Split, FORMAT, FORMAT_VERSION,
    MANIFEST_FILE,
};
use memmap2::Mmap;
use ndarray::{Array2, Array3, ArrayView2};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use tracing::{debug, warn};
use volume::{Mask, Volume, VolumeError};

/// Sub-folder of the prepared folder holding one folder per case.
pub const CASES_DIR: &str = "cases";
/// Per-case metadata file.
pub const META_FILE: &str = "meta.json";
pub const NCCT_FILE: &str = "ncct.i16";
pub const CTPA_FILE: &str = "ctpa.i16";
pub const BODY_FILE: &str = "body.u8";
pub const LUNG_FILE: &str = "lung.u8";

/// Errors opening or reading a prepared dataset. Each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A slice whose bytes do not match the CRC written with the store.
    #[error("{}: slice {z} is damaged (its CRC-32 differs from the one written with the \
             store); run `ncct2ctpa prepare` again to rebuild the case", path.display())]
    Damaged { path: PathBuf, z: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid prepared-dataset file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: format version {found} (format {format:?}); this tool reads {FORMAT:?} version {FORMAT_VERSION}; rerun `ncct2ctpa prepare`")]
    Version {
        path: PathBuf,
        format: String,
        found: u32,
    },
    #[error("{path}: prepare did not finish (status in_progress); rerun `ncct2ctpa prepare` to complete it")]
    Incomplete { path: PathBuf },
    #[error("{path}: {found} bytes, expected {expected} for shape [z, y, x] = {shape:?} (truncated or stale store; rerun `ncct2ctpa prepare`)")]
    Length {
        path: PathBuf,
        expected: u64,
        found: u64,
        shape: [usize; 3],
    },
    #[error("no case {0:?} in the prepared dataset")]
    UnknownCase(String),
    #[error("case {case}: slice {z} out of range (it has {slices} slices)")]
    SliceOutOfRange {
        case: String,
        z: usize,
        slices: usize,
    },
    #[error("{path}: the slice store is little-endian and this machine is not")]
    Endianness { path: PathBuf },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The arrays of one case on its common grid, `[z, y, x]`, as [`write_case`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct CaseArrays<'a> {
    pub ncct: &'a Array3<f32>,
    pub ctpa: &'a Array3<f32>,
    pub body: &'a Array3<u8>,
    pub lung: &'a Array3<u8>,
}

/// Rounds HU to the nearest integer and saturates to i16 (NaN, which CT never holds, becomes
/// -1024, air).
#[inline]
pub fn hu_to_i16(hu: f32) -> i16 {
    if hu.is_nan() {
        -1024
    } else {
        hu.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
    }
}

fn write_i16(path: &Path, data: &Array3<f32>) -> std::io::Result<Vec<u32>> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut clamped = 0usize;
    let mut buf = Vec::new();
    let mut crcs = Vec::with_capacity(data.dim().0);
    for plane in data.outer_iter() {
        buf.clear();
        for &v in plane.iter() {
            let q = hu_to_i16(v);
            if (q as f32 - v).abs() > 0.5 {
                clamped += 1;
            }
            buf.extend_from_slice(&q.to_le_bytes());
        }
        out.write_all(&buf)?;
        crcs.push(crc32fast::hash(&buf));
    }
    if clamped > 0 {
        warn!(
            path = %path.display(),
            clamped,
            "voxels outside the i16 range (or NaN) were saturated"
        );
    }
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    Ok(crcs)
}

fn write_u8(path: &Path, data: &Array3<u8>) -> std::io::Result<Vec<u32>> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut crcs = Vec::with_capacity(data.dim().0);
    for plane in data.outer_iter() {
        let bytes = match plane.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(plane.iter().copied().collect::<Vec<u8>>()),
        };
        out.write_all(&bytes)?;
        crcs.push(crc32fast::hash(&bytes));
    }
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    Ok(crcs)
}

/// `cases/CASE/checksums.json`: the CRC-32 of every axial slice of each array file, written
/// with the store and checked on every slice read ([`PreparedDataset::slice_at`],
/// [`PreparedDataset::volume`]): a bit flip or random bytes in a store file of the right
/// size are caught at the slice that holds them, for about 0.1 ms per 512 x 512 slice read
/// (CRC-32 runs at several GB/s). Per slice rather than per file: a training reads slices at
/// random, and hashing whole files at open would cost minutes on a large dataset. Stores
/// written before this file existed have none and are read unchecked (logged).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceChecksums {
    pub ncct: Vec<u32>,
    pub ctpa: Vec<u32>,
    pub body: Vec<u32>,
    pub lung: Vec<u32>,
}

/// The file name of [`SliceChecksums`] in a case folder.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// Errors unless `bytes` (slice `z` of `file`) has the recorded CRC.
fn verify_slice(crcs: &[u32], z: usize, bytes: &[u8], file: PathBuf) -> Result<(), StoreError> {
    match crcs.get(z) {
        Some(&want) if want != crc32fast::hash(bytes) => Err(StoreError::Damaged { path: file, z }),
        _ => Ok(()),
    }
}

/// Folder of `case` inside the prepared folder `root`.
pub fn case_dir(root: &Path, case: &str) -> PathBuf {
    root.join(CASES_DIR).join(case)
}

/// Writes one case's store (`cases/CASE/`) atomically: the four arrays and `meta.json` go into
/// a temporary folder that is renamed into place; an existing folder for the case is moved
/// aside first and removed afterwards. Returns the case folder.
pub fn write_case(
    root: &Path,
    meta: &CaseMeta,
    arrays: CaseArrays<'_>,
) -> Result<PathBuf, StoreError> {
    let shape = meta.grid.shape_zyx;
    for (name, dim) in [
        ("ncct", arrays.ncct.dim()),
        ("ctpa", arrays.ctpa.dim()),
        ("body", arrays.body.dim()),
        ("lung", arrays.lung.dim()),
    ] {
        if [dim.0, dim.1, dim.2] != shape {
            return Err(VolumeError::invalid(format!(
                "case {}: {name} array has shape {dim:?}, the grid is {shape:?}",
                meta.case
            ))
            .into());
        }
    }
    let cases = root.join(CASES_DIR);
    std::fs::create_dir_all(&cases).map_err(io_err(&cases))?;
    let dir = case_dir(root, &meta.case);
    let aside = cases.join(format!(".{}.old-{}", meta.case, std::process::id()));
    if dir.exists() {
        debug!(dir = %dir.display(), "moving the previous store aside");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
        }
        std::fs::rename(&dir, &aside).map_err(io_err(&dir))?;
    }
    let meta_json = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Parse {
        path: dir.join(META_FILE),
        message: e.to_string(),
    })?;
    util::atomic::write_dir_atomic(&dir, |tmp| {
        let file = |name: &str| tmp.join(name);
        let named = |name: &str| {
            let final_path = dir.join(name);
            move |e| VolumeError::io(final_path, e)
        };
        let sums = SliceChecksums {
            ncct: write_i16(&file(NCCT_FILE), arrays.ncct).map_err(named(NCCT_FILE))?,
            ctpa: write_i16(&file(CTPA_FILE), arrays.ctpa).map_err(named(CTPA_FILE))?,
            body: write_u8(&file(BODY_FILE), arrays.body).map_err(named(BODY_FILE))?,
            lung: write_u8(&file(LUNG_FILE), arrays.lung).map_err(named(LUNG_FILE))?,
        };
        let sums_json =
            serde_json::to_vec(&sums).map_err(|e| VolumeError::invalid(e.to_string()))?;
        std::fs::write(file(CHECKSUMS_FILE), sums_json).map_err(named(CHECKSUMS_FILE))?;
        // meta.json last: inside the temporary folder nothing is visible anyway, but a
        // reader that finds meta.json can then rely on the arrays being complete.
        std::fs::write(file(META_FILE), &meta_json).map_err(named(META_FILE))?;
        Ok::<(), VolumeError>(())
    })?;
    if aside.exists() {
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            warn!(
                "could not remove the previous store {}: {e}",
                aside.display()
            );
        }
    }
    debug!(case = %meta.case, dir = %dir.display(), "case store written");
    Ok(dir)
}

/// Reads `cases/CASE/meta.json` and checks that the four arrays exist with the right length:
/// `Ok(Some(meta))` for a complete store, `Ok(None)` when there is no store for the case.
pub fn read_case_meta(root: &Path, case: &str) -> Result<Option<CaseMeta>, StoreError> {
    let dir = case_dir(root, case);
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    let meta: CaseMeta = serde_json::from_slice(&text).map_err(|e| StoreError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    check_lengths(&dir, &meta)?;
    Ok(Some(meta))
}

fn store_files() -> [(&'static str, u64); 4] {
    [
        (NCCT_FILE, 2),
        (CTPA_FILE, 2),
        (BODY_FILE, 1),
        (LUNG_FILE, 1),
    ]
}

fn check_lengths(dir: &Path, meta: &CaseMeta) -> Result<(), StoreError> {
    let shape = meta.grid.shape_zyx;
    let voxels = shape.iter().map(|&s| s as u64).product::<u64>();
    for (name, itemsize) in store_files() {
        let path = dir.join(name);
        let found = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        let expected = voxels * itemsize;
        if found != expected {
            return Err(StoreError::Length {
                path,
                expected,
                found,
                shape,
            });
        }
    }
    Ok(())
}

/// Reads and checks `manifest.json` (format, version, status).
pub fn read_manifest(root: &Path) -> Result<Manifest, StoreError> {
    let path = root.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    // Check the version before the full structure, so an old or newer manifest gets the
    // version message rather than a confusing field error.
    #[derive(serde::Deserialize)]
    struct Head {
        format: String,
        format_version: u32,
    }
    let head: Head = serde_json::from_slice(&text).map_err(|e| StoreError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if head.format != FORMAT || head.format_version != FORMAT_VERSION {
        return Err(StoreError::Version {
            path,
            format: head.format,
            found: head.format_version,
        });
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| StoreError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if manifest.status != ManifestStatus::Complete {
        return Err(StoreError::Incomplete { path });
    }
    Ok(manifest)
}

/// A case's memory-mapped arrays.
#[derive(Debug)]
struct CaseStore {
    shape: [usize; 3],
    /// Per-slice CRCs (`None` for a store written before they existed).
    crcs: Option<SliceChecksums>,
    ncct: Mmap,
    ctpa: Mmap,
    body: Mmap,
    lung: Mmap,
}

fn map(path: &Path) -> Result<Mmap, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the store files are never modified in place: prepare writes a new case folder
    // and renames it over the old one, so a mapping keeps seeing the file it opened. (Another
    // program truncating the file while it is mapped would make reads fault; that is outside
    // what any reader of a file can guard against.)
    let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    Ok(mmap)
}

/// One axial slice of a case: views into the memory-mapped store (no copy).
///
/// Use the views for custom processing, or [`SliceRef::normalized`] for the network's input:
/// HU clipped to the window and mapped to `[-1, 1]`, masks as 0.0/1.0.
#[derive(Debug, Clone, Copy)]
pub struct SliceRef<'a> {
    /// `[y, x]`, HU.
    pub ncct: ArrayView2<'a, i16>,
    /// `[y, x]`, HU.
    pub ctpa: ArrayView2<'a, i16>,
    /// `[y, x]`, 0/1.
    pub body: ArrayView2<'a, u8>,
    /// `[y, x]`, 0/1.
    pub lung: ArrayView2<'a, u8>,
    pub window: IntensityWindow,
}

/// One slice as owned `f32` arrays, `[y, x]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceF32 {
    /// NCCT, `[-1, 1]`.
    pub ncct: Array2<f32>,
    /// CTPA, `[-1, 1]`.
    pub ctpa: Array2<f32>,
    /// 0.0 / 1.0.
    pub body: Array2<f32>,
    /// 0.0 / 1.0.
    pub lung: Array2<f32>,
}

impl SliceRef<'_> {
    /// `(ny, nx)`.
    pub fn dim(&self) -> (usize, usize) {
        self.ncct.dim()
    }

    /// NCCT normalised to `[-1, 1]` with the dataset's window.
    pub fn ncct_normalized(&self) -> Array2<f32> {
        let w = self.window;
        self.ncct.mapv(|v| w.normalize(v as f32))
    }

    /// CTPA normalised to `[-1, 1]` with the dataset's window.
    pub fn ctpa_normalized(&self) -> Array2<f32> {
        let w = self.window;
        self.ctpa.mapv(|v| w.normalize(v as f32))
    }

    /// All four arrays as owned `f32`.
    pub fn normalized(&self) -> SliceF32 {
        SliceF32 {
            ncct: self.ncct_normalized(),
            ctpa: self.ctpa_normalized(),
            body: self.body.mapv(f32::from),
            lung: self.lung.mapv(f32::from),
        }
    }
}

/// The `[y, x]` view of `range` of an i16 store file.
fn plane_i16(
    m: &Mmap,
    range: std::ops::Range<usize>,
    dim: (usize, usize),
    path: impl FnOnce() -> PathBuf,
) -> Result<ArrayView2<'_, i16>, StoreError> {
    let values: &[i16] =
        bytemuck::try_cast_slice(&m[..]).map_err(|_| StoreError::Endianness { path: path() })?;
    ArrayView2::from_shape(dim, &values[range])
        .map_err(|e| StoreError::Volume(VolumeError::invalid(e.to_string())))
}

/// The `[y, x]` view of `range` of a u8 store file.
fn plane_u8(
    m: &Mmap,
    range: std::ops::Range<usize>,
    dim: (usize, usize),
) -> Result<ArrayView2<'_, u8>, StoreError> {
    ArrayView2::from_shape(dim, &m[range])
        .map_err(|e| StoreError::Volume(VolumeError::invalid(e.to_string())))
}

/// A whole case in HU on its stored grid, for validation and evaluation.
#[derive(Debug, Clone)]
pub struct CaseVolumes {
    /// The case's name in the manifest.
    pub name: String,
    pub ncct: Volume,
    pub ctpa: Volume,
    pub body: Mask,
    pub lung: Mask,
}

/// The prepared dataset as the sampler's slice source: slices normalised to [-1, 1] with
/// `window`, the run's (which may differ from the dataset's: the store keeps HU).
#[derive(Debug, Clone)]
pub struct WindowedStore {
    ds: std::sync::Arc<PreparedDataset>,
    window: IntensityWindow,
}

impl WindowedStore {
    pub fn new(ds: std::sync::Arc<PreparedDataset>, window: IntensityWindow) -> Self {
        Self { ds, window }
    }

    /// Normalised with the dataset's own window.
    pub fn with_dataset_window(ds: std::sync::Arc<PreparedDataset>) -> Self {
        let window = ds.window();
        Self { ds, window }
    }

    pub fn dataset(&self) -> &PreparedDataset {
        &self.ds
    }

    pub fn window(&self) -> IntensityWindow {
        self.window
    }
}

/// An opened prepared dataset: the manifest and every case's arrays, memory-mapped.
#[derive(Debug)]
pub struct PreparedDataset {
    root: PathBuf,
    manifest: Manifest,
    stores: Vec<CaseStore>,
    index: HashMap<String, usize>,
}

/// Rejects absolute paths and `..` in a manifest's case folder (a manifest must not point
/// reads outside its own folder).
fn check_relative(manifest_path: &Path, dir: &Path) -> Result<(), StoreError> {
    let ok = dir
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok && !dir.as_os_str().is_empty() {
        Ok(())
    } else {
        Err(StoreError::Parse {
            path: manifest_path.to_path_buf(),
            message: format!(
                "case folder {} must be a relative path inside the prepared folder",
                dir.display()
            ),
        })
    }
}

/// A case folder's [`SliceChecksums`], checked for one CRC per slice.
fn read_checksums(dir: &Path, slices: usize) -> Result<Option<SliceChecksums>, StoreError> {
    let path = dir.join(CHECKSUMS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!("{}: no per-slice checksums (an older store)", dir.display());
            return Ok(None);
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let sums: SliceChecksums = serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    for v in [&sums.ncct, &sums.ctpa, &sums.body, &sums.lung] {
        if v.len() != slices {
            return Err(StoreError::Parse {
                path,
                message: format!("{} checksums for {slices} slices", v.len()),
            });
        }
    }
    Ok(Some(sums))
}

impl PreparedDataset {
    /// Opens the prepared dataset at `root`: reads and checks the manifest (format version,
    /// complete), checks that every case's four store files exist with exactly the length
    /// its shape implies, and memory-maps them.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let manifest = read_manifest(root)?;
        let manifest_path = root.join(MANIFEST_FILE);
        let mut stores = Vec::with_capacity(manifest.cases.len());
        let mut index = HashMap::new();
        for (i, entry) in manifest.cases.iter().enumerate() {
            check_relative(&manifest_path, &entry.dir)?;
            let dir = root.join(&entry.dir);
            check_lengths(&dir, &entry.meta)?;
            let store = CaseStore {
                shape: entry.meta.grid.shape_zyx,
                crcs: read_checksums(&dir, entry.meta.grid.shape_zyx[0])?,
                ncct: map(&dir.join(NCCT_FILE))?,
                ctpa: map(&dir.join(CTPA_FILE))?,
                body: map(&dir.join(BODY_FILE))?,
                lung: map(&dir.join(LUNG_FILE))?,
            };
            for (name, m) in [(NCCT_FILE, &store.ncct), (CTPA_FILE, &store.ctpa)] {
                if cfg!(target_endian = "big")
                    || bytemuck::try_cast_slice::<u8, i16>(&m[..]).is_err()
                {
                    return Err(StoreError::Endianness {
                        path: dir.join(name),
                    });
                }
            }
            if index.insert(entry.meta.case.clone(), i).is_some() {
                return Err(StoreError::Parse {
                    path: manifest_path,
                    message: format!("case {} is listed twice", entry.meta.case),
                });
            }
            stores.push(store);
        }
        debug!(root = %root.display(), cases = stores.len(), "prepared dataset opened");
        Ok(Self {
            root: root.to_path_buf(),
            manifest,
            stores,
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The HU window slices are normalised with.
    pub fn window(&self) -> IntensityWindow {
        self.manifest.window
    }

    /// Cases of one split, in manifest (name) order.
    pub fn cases(&self, split: Split) -> Vec<&CaseEntry> {
        self.manifest
            .cases
            .iter()
            .filter(|c| c.split == split)
            .collect()
    }

    /// Position of a case in [`Manifest::cases`], for [`Self::slice_at`].
    pub fn case_index(&self, case: &str) -> Option<usize> {
        self.index.get(case).copied()
    }

    /// Axial slice `z` of the named case.
    pub fn slice(&self, case: &str, z: usize) -> Result<SliceRef<'_>, StoreError> {
        let i = self
            .case_index(case)
            .ok_or_else(|| StoreError::UnknownCase(case.to_owned()))?;
        self.slice_at(i, z)
    }

    /// Number of slices of the case at position `index`.
    pub fn depth_at(&self, index: usize) -> Option<usize> {
        self.stores.get(index).map(|s| s.shape[0])
    }

    /// Axial slice `z` of the case at position `index` (the sampler's fast path: no lookup
    /// by name).
    pub fn slice_at(&self, index: usize, z: usize) -> Result<SliceRef<'_>, StoreError> {
        let (store, entry) = match (self.stores.get(index), self.manifest.cases.get(index)) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(StoreError::UnknownCase(format!("#{index}"))),
        };
        let [nz, ny, nx] = store.shape;
        if z >= nz {
            return Err(StoreError::SliceOutOfRange {
                case: entry.meta.case.clone(),
                z,
                slices: nz,
            });
        }
        let range = z * ny * nx..(z + 1) * ny * nx;
        let path = |name: &str| self.root.join(&entry.dir).join(name);
        if let Some(c) = &store.crcs {
            let (i16_range, u8_range) = (2 * range.start..2 * range.end, range.clone());
            verify_slice(&c.ncct, z, &store.ncct[i16_range.clone()], path(NCCT_FILE))?;
            verify_slice(&c.ctpa, z, &store.ctpa[i16_range], path(CTPA_FILE))?;
            verify_slice(&c.body, z, &store.body[u8_range.clone()], path(BODY_FILE))?;
            verify_slice(&c.lung, z, &store.lung[u8_range], path(LUNG_FILE))?;
        }
        Ok(SliceRef {
            ncct: plane_i16(&store.ncct, range.clone(), (ny, nx), || path(NCCT_FILE))?,
            ctpa: plane_i16(&store.ctpa, range.clone(), (ny, nx), || path(CTPA_FILE))?,
            body: plane_u8(&store.body, range.clone(), (ny, nx))?,
            lung: plane_u8(&store.lung, range, (ny, nx))?,
            window: self.manifest.window,
        })
    }

    /// The whole case in HU with its geometry.
    pub fn volume(&self, case: &str) -> Result<CaseVolumes, StoreError> {
        let i = self
            .case_index(case)
            .ok_or_else(|| StoreError::UnknownCase(case.to_owned()))?;
        let store = &self.stores[i];
        let entry = &self.manifest.cases[i];
        let geometry = entry.meta.grid.geometry;
        let [nz, ny, nx] = store.shape;
        let dir = self.root.join(&entry.dir);
        for z in 0..nz {
            self.slice_at(i, z)?; // checks every slice's CRC
        }
        let hu = |m: &Mmap, name: &str| -> Result<Volume, StoreError> {
            let values: &[i16] =
                bytemuck::try_cast_slice(&m[..]).map_err(|_| StoreError::Endianness {
                    path: dir.join(name),
                })?;
            let data =
                Array3::from_shape_vec((nz, ny, nx), values.iter().map(|&v| v as f32).collect())
                    .map_err(|e| VolumeError::invalid(e.to_string()))?;
            Ok(Volume::new(data, geometry)?)
        };
        let mask = |m: &Mmap| -> Result<Mask, StoreError> {
            let data = Array3::from_shape_vec((nz, ny, nx), m.to_vec())
                .map_err(|e| VolumeError::invalid(e.to_string()))?;
            Ok(Volume::new(data, geometry)?)
        };
        Ok(CaseVolumes {
            name: case.to_owned(),
            ncct: hu(&store.ncct, NCCT_FILE)?,
            ctpa: hu(&store.ctpa, CTPA_FILE)?,
            body: mask(&store.body)?,
            lung: mask(&store.lung)?,
        })
    }
}
