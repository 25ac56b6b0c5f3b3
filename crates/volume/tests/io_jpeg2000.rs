//! JPEG 2000 DICOM through the public reader: the fuzz regression input decodes exactly (it is a
//! valid file; the bug was in the decoder we dropped), and codestreams damaged in their SIZ or
//! tile-part headers give an error naming the file, the frame and the problem.

use std::path::{Path, PathBuf};
use volume::io::dicom;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dicom")
        .join(rel)
}

/// Voxels of pydicom's uncompressed `MR_small.dcm`: the same image as the JPEG 2000 lossless
/// and RLE variants (pydicom decodes all three to equal arrays).
fn uncompressed_reference() -> Vec<f32> {
    let s = dicom::read_series(&data("MR_small"), None).unwrap();
    s.volume.data.iter().copied().collect()
}

/// A folder holding `bytes` as its only file.
fn folder_with(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, bytes).unwrap();
    (dir, file)
}

#[test]
fn openjp2_fuzz_regression_input_decodes_exactly() {
    // fuzz/regressions/dicom-openjp2-tcd-null.dcm aborted the fuzz target inside openjp2's
    // teardown (dealloc of a null pointer). It is byte for byte pydicom's valid
    // MR_small_jp2klossless.dcm, so the right outcome is an exact decode, not an error.
    let bytes = std::fs::read(repo().join("fuzz/regressions/dicom-openjp2-tcd-null.dcm")).unwrap();
    let (dir, _) = folder_with("regression.dcm", &bytes);
    let s = dicom::read_series(dir.path(), None).unwrap();
    assert_eq!(s.summary.transfer_syntax, "1.2.840.10008.1.2.4.90");
    assert_eq!(s.volume.shape_zyx(), [1, 64, 64]);
    let got: Vec<f32> = s.volume.data.iter().copied().collect();
    assert_eq!(got, uncompressed_reference());
}

#[test]
fn jpeg2000_and_rle_variants_equal_the_uncompressed_image_voxel_for_voxel() {
    let reference = uncompressed_reference();
    for d in ["MR_small_jp2klossless", "MR_small_RLE"] {
        let s = dicom::read_series(&data(d), None).unwrap_or_else(|e| panic!("{d}: {e}"));
        let got: Vec<f32> = s.volume.data.iter().copied().collect();
        assert_eq!(got, reference, "{d}");
    }
}

/// The valid JPEG 2000 file with `edit` applied to its codestream (found by its SOC+SIZ
/// signature), read through `read_series`: the error text.
fn corrupt(name: &str, edit: impl Fn(&mut Vec<u8>, usize)) -> String {
    let mut bytes = std::fs::read(data("MR_small_jp2klossless/MR_small_jp2klossless.dcm")).unwrap();
    let soc = bytes
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .unwrap();
    edit(&mut bytes, soc);
    let (dir, _) = folder_with(name, &bytes);
    let err = dicom::read_series(dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "names the file: {err}");
    assert!(err.contains("JPEG 2000 frame 0"), "names the frame: {err}");
    err
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn codestream_larger_than_rows_columns_is_refused() {
    // SIZ body: Rsiz at soc+6, Xsiz at soc+8, Ysiz at soc+12, XTsiz at soc+24, YTsiz at soc+28
    // (one tile covering the image, so that the tile-parts still agree).
    let err = corrupt("bigger.dcm", |b, soc| {
        put_u32(b, soc + 8, 128);
        put_u32(b, soc + 12, 96);
        put_u32(b, soc + 24, 128);
        put_u32(b, soc + 28, 96);
    });
    assert!(
        err.contains("128 x 96") && err.contains("Columns 64 x Rows 64"),
        "{err}"
    );
}

#[test]
fn zero_image_area_is_refused() {
    // XOsiz (soc+16) equal to Xsiz: an empty image.
    let err = corrupt("empty.dcm", |b, soc| put_u32(b, soc + 16, 64));
    assert!(err.contains("empty image area"), "{err}");
}

#[test]
fn component_count_mismatch_is_refused() {
    // Csiz (soc+40) says 3 components, but the segment holds one.
    let err = corrupt("csiz.dcm", |b, soc| b[soc + 41] = 3);
    assert!(err.contains("Csiz 3"), "{err}");
}

/// Offset of the first SOT marker after `soc`.
fn sot(b: &[u8], soc: usize) -> usize {
    soc + b[soc..].windows(2).position(|w| w == [0xFF, 0x90]).unwrap()
}

#[test]
fn tile_index_outside_the_grid_is_refused() {
    let err = corrupt("tile.dcm", |b, soc| {
        let at = sot(b, soc);
        b[at + 5] = 7; // Isot = 7 in a 1-tile image
    });
    assert!(
        err.contains("tile index 7 outside the tile grid of 1 tiles"),
        "{err}"
    );
}

#[test]
fn tile_part_longer_than_the_data_is_refused() {
    let err = corrupt("psot.dcm", |b, soc| {
        let at = sot(b, soc);
        put_u32(b, at + 6, 1_000_000); // Psot
    });
    assert!(err.contains("Psot 1000000 runs past the end"), "{err}");
}

#[test]
fn precision_above_bits_allocated_is_refused() {
    // Ssiz of the one component (soc+42): 0x9F = signed 32 bits, BitsAllocated is 16.
    let err = corrupt("precision.dcm", |b, soc| b[soc + 42] = 0x9F);
    assert!(err.contains("32 bits, BitsAllocated is 16"), "{err}");
}
