//! Inputs the DICOM fuzz target found (`fuzz/regressions/`), each read as the only file of a
//! folder through the public reader, with the outcome each must have.

use std::path::{Path, PathBuf};
use volume::io::dicom;

fn regression(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(name)
}

/// `read_series` on a temporary folder holding the regression input as `slice.dcm`.
fn read_alone(name: &str) -> volume::Result<dicom::DicomSeries> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(regression(name), dir.path().join("slice.dcm")).unwrap();
    dicom::read_series(dir.path(), None)
}

#[test]
fn element_length_past_the_end_of_the_file_is_an_error_not_a_huge_allocation() {
    // A 35 kB file one of whose elements declares 2,291,021,782 bytes: dicom-rs would allocate
    // that much before noticing the file is short (an out-of-memory abort in the fuzzer).
    let err = read_alone("dicom-oom-element-length.dcm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(
        err.contains("corrupt DICOM file") && err.contains("2291021782 bytes"),
        "{err}"
    );
}

#[test]
fn every_regression_input_gives_ok_or_a_clear_error() {
    for entry in std::fs::read_dir(regression("")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        match read_alone(&name) {
            Ok(s) => assert!(s.volume.data.iter().all(|v| v.is_finite()), "{name}"),
            Err(e) => assert!(e.to_string().contains("slice.dcm"), "{name}: {e}"),
        }
    }
}

#[test]
fn unknown_vr_in_the_meta_group_is_read_with_a_32_bit_length_and_refused() {
    // (0002,0010) with VR "U\xFF": dicom-rs reads it as UN with a 32-bit length of ~775 MB and
    // zero-filled that much before failing (seconds per file); the length walker refuses it.
    let err = read_alone("dicom-meta-unknown-vr-length.dcm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(err.contains("(0002,0010)"), "{err}");
}

#[test]
fn rle_decoder_panic_is_contained_as_an_error() {
    // dicom-rs's RLE decoder panics (index out of bounds) on this file's segment table.
    let err = read_alone("dicom-rle-decoder-panic.dcm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(err.contains("pixel data decoder panicked"), "{err}");
}

#[test]
fn corrupt_deflated_data_set_is_an_error() {
    // Deflated explicit VR LE whose stream is broken: dicom-rs 0.8 parsed the compressed
    // bytes as elements and asked for 3.6 GB. We now inflate the data set ourselves
    // (io/dicom/inflate.rs) and refuse a corrupt stream before dicom-rs sees anything
    // (tests/io_deflated.rs checks no large allocation happens).
    let err = read_alone("dicom-oom-deflated-length.dcm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slice.dcm"), "names the file: {err}");
    assert!(err.contains("deflated"), "says what is wrong: {err}");
}
