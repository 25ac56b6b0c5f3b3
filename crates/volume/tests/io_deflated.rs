//! Deflated Explicit VR Little Endian DICOM (transfer syntax 1.2.840.10008.1.2.1.99).
//!
//! Valid files must read exactly as pydicom and SimpleITK read them (`data/dicom_deflated.json`
//! and the two files it names, made by `tools/golden/dicom_deflated.py`); a damaged one must
//! give an error naming the file, without dicom-rs ever asking for the gigabytes a corrupt
//! length declares. This binary counts allocations to check the latter: every test in it reads
//! small files only, so no single allocation may exceed [`MAX_ONE_ALLOCATION`].

use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use volume::io::dicom;

/// Records the largest single allocation request of the process.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Far above what a 512 x 512 slice needs (~2 MB as float32), far below a corrupt length.
const MAX_ONE_ALLOCATION: usize = 64 << 20;

fn assert_no_huge_allocation(what: &str) {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= MAX_ONE_ALLOCATION,
        "{what}: one allocation asked for {largest} bytes"
    );
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(data_dir().join("dicom_deflated.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The deflated CT slice (with geometry) that the corruption tests start from.
const CT: &str = "dicom/CT_small_deflated/CT_small_deflated.dcm";

fn ct_dir() -> PathBuf {
    data_dir().join("dicom/CT_small_deflated")
}

fn valid_file() -> Vec<u8> {
    std::fs::read(data_dir().join(CT)).unwrap()
}

/// Offset of the deflated stream: after preamble, "DICM" and the meta group, whose length
/// (0002,0000) is the UL value at bytes 140..144.
fn stream_start(file: &[u8]) -> usize {
    let group = u32::from_le_bytes([file[140], file[141], file[142], file[143]]);
    144 + group as usize
}

/// `read_series` on a temporary folder holding `bytes` as `slice.dcm`.
fn read_bytes(bytes: &[u8]) -> volume::Result<dicom::DicomSeries> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slice.dcm"), bytes).unwrap();
    dicom::read_series(dir.path(), None)
}

fn deflate(b: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(b).unwrap();
    z.finish().unwrap()
}

fn inflate(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(b), &mut out).unwrap();
    out
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// `rows x columns` HU values, row-major, against pydicom: every row and column sum and the
/// probes, exactly (integer stored values, slope 1).
fn assert_pixels(what: &str, hu: &[f32], case: &Value) {
    let cols = case["columns"].as_u64().unwrap() as usize;
    let rows = case["rows"].as_u64().unwrap() as usize;
    assert_eq!(hu.len(), rows * cols, "{what}");
    for (y, want) in case["row_sums"].as_array().unwrap().iter().enumerate() {
        let got: f64 = hu[y * cols..(y + 1) * cols]
            .iter()
            .map(|&v| f64::from(v))
            .sum();
        assert_eq!(got, f(want), "{what}: row {y}");
    }
    for (x, want) in case["column_sums"].as_array().unwrap().iter().enumerate() {
        let got: f64 = hu.iter().skip(x).step_by(cols).map(|&v| f64::from(v)).sum();
        assert_eq!(got, f(want), "{what}: column {x}");
    }
    for p in case["probes"].as_array().unwrap() {
        let (y, x) = (
            p[1].as_u64().unwrap() as usize,
            p[2].as_u64().unwrap() as usize,
        );
        assert_eq!(
            f64::from(hu[y * cols + x]),
            f(&p[3]),
            "{what}: pixel ({y}, {x})"
        );
    }
}

#[test]
fn valid_deflated_files_decode_exactly_as_pydicom_reads_them() {
    let g = golden();
    for case in g["files"].as_array().unwrap() {
        let path = data_dir().join(case["file"].as_str().unwrap());
        let what = path.display().to_string();
        let h = dicom::scan::read_header(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(h.transfer_syntax, case["transfer_syntax"].as_str().unwrap());
        assert_eq!(h.series_uid, case["series_uid"].as_str().unwrap());
        assert_eq!(h.modality, case["modality"].as_str().unwrap());
        assert_eq!(
            h.position.is_some(),
            case["has_position"].as_bool().unwrap()
        );
        let hu = dicom::pixels::decode_slice(&h).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_pixels(&what, &hu, case);
    }
    assert_no_huge_allocation("valid files");
}

#[test]
fn deflated_ct_slice_reads_as_a_volume_with_simpleitk_geometry() {
    let g = golden();
    let case = g["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == CT)
        .unwrap();
    let s = dicom::read_series(&ct_dir(), None).unwrap();
    assert_eq!(
        s.summary.transfer_syntax,
        case["transfer_syntax"].as_str().unwrap()
    );
    assert_eq!(s.series_uid, case["series_uid"].as_str().unwrap());
    let geo = &s.volume.geometry;
    for i in 0..3 {
        assert!(
            (geo.spacing[i] - f(&case["spacing"][i])).abs() < 1e-5,
            "{geo:?}"
        );
        assert!(
            (geo.origin[i] - f(&case["origin"][i])).abs() < 1e-5,
            "{geo:?}"
        );
        for c in 0..3 {
            assert!((geo.direction[i][c] - f(&case["direction"][i][c])).abs() < 1e-5);
        }
    }
    let hu: Vec<f32> = s.volume.data.iter().copied().collect();
    assert_pixels(CT, &hu, case);
}

#[test]
fn fuzz_regression_deflated_length_is_refused_before_any_huge_allocation() {
    // Found by the DICOM fuzz target: its deflate stream is corrupt from its first block.
    // dicom-rs 0.8 read the compressed bytes as plain elements and asked for 3.6 GB.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/dicom-oom-deflated-length.dcm");
    let err = read_bytes(&std::fs::read(path).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(
        err.contains("corrupt DICOM file: deflated data set is corrupt"),
        "{err}"
    );
    assert_no_huge_allocation("fuzz regression");
}

#[test]
fn deflated_stream_cut_short_is_refused_naming_the_file() {
    let file = valid_file();
    let start = stream_start(&file);
    for cut in [start + 10, start + (file.len() - start) / 2, file.len() - 9] {
        let err = read_bytes(&file[..cut]).unwrap_err().to_string();
        assert!(err.contains("slice.dcm"), "cut {cut}: {err}");
        assert!(
            err.contains("deflated data set is truncated"),
            "cut {cut}: {err}"
        );
    }
    assert_no_huge_allocation("truncated streams");
}

#[test]
fn huge_element_length_inside_the_deflated_data_set_is_refused() {
    // The valid file's data set, with PixelData's 32-bit length set to 3.6 GB, deflated again.
    let file = valid_file();
    let start = stream_start(&file);
    let mut data_set = inflate(&file[start..]);
    let pixel_tag = [0xE0, 0x7F, 0x10, 0x00, b'O'];
    let at = data_set
        .windows(5)
        .position(|w| w == pixel_tag)
        .expect("PixelData in the CT slice");
    data_set[at + 8..at + 12].copy_from_slice(&3_635_603_344u32.to_le_bytes());
    let mut bad = file[..start].to_vec();
    bad.extend(deflate(&data_set));
    let err = read_bytes(&bad).unwrap_err().to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(
        err.contains("(7FE0,0010)") && err.contains("declares 3635603344 bytes"),
        "{err}"
    );
    assert_no_huge_allocation("huge inflated length");
}

#[test]
fn re_deflated_data_set_reads_the_same_pixels() {
    // The same data set deflated by another encoder (flate2 instead of the file's writer).
    let file = valid_file();
    let start = stream_start(&file);
    let mut again = file[..start].to_vec();
    again.extend(deflate(&inflate(&file[start..])));
    let a = dicom::read_series(&ct_dir(), None).unwrap();
    let b = read_bytes(&again).unwrap();
    assert_eq!(a.volume.data, b.volume.data);
}
