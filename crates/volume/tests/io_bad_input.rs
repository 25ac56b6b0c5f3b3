//! The bad-input corpus: each broken file or folder gives an `Err` that names it, and nothing
//! panics (every read runs under `catch_unwind`).

use flate2::{write::GzEncoder, Compression};
use ndarray::Array3;
use std::io::Write;
use std::path::{Path, PathBuf};
use volume::io::{dicom, nifti, read_volume};
use volume::{Geometry, Volume};

/// A valid little-endian float32 .nii of 4x5x6 voxels.
fn good_nii() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.nii");
    let v = Volume::new(Array3::from_elem((6, 5, 4), 1.5f32), Geometry::default()).unwrap();
    nifti::write_nifti(&p, &v).unwrap();
    std::fs::read(p).unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn set_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Runs `read` on `path`, asserting it returns an error mentioning `name` and `want`.
fn expect_err(path: &Path, name: &str, want: &str, read: fn(&Path) -> volume::Result<Volume>) {
    let p = path.to_path_buf();
    let result = std::panic::catch_unwind(move || read(&p));
    let result = result.unwrap_or_else(|_| panic!("{name}: the reader panicked"));
    let err = match result {
        Ok(_) => panic!("{name}: accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(name),
        "{name}: error does not name the file: {err}"
    );
    assert!(
        err.to_lowercase().contains(&want.to_lowercase()),
        "{name}: expected '{want}' in: {err}"
    );
}

#[test]
// The corpus is built case by case, each with its own comment and derivation.
#[allow(clippy::vec_init_then_push)]
fn broken_nifti_files_are_refused_with_their_name() {
    let d = tempfile::tempdir().unwrap();
    let good = good_nii();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push(("empty.nii", Vec::new(), "truncated"));
    cases.push(("short_header.nii", good[..200].to_vec(), "truncated"));
    cases.push((
        "truncated_data.nii",
        good[..good.len() - 10].to_vec(),
        "truncated",
    ));
    cases.push((
        "truncated.nii.gz",
        gz(&good[..good.len() - 10]),
        "truncated",
    ));
    let full_gz = gz(&good);
    cases.push((
        "cut_gzip.nii.gz",
        full_gz[..full_gz.len() / 2].to_vec(),
        "nii.gz",
    ));
    let mut corrupt = full_gz.clone();
    for b in corrupt[20..40].iter_mut() {
        *b ^= 0x5a;
    }
    cases.push(("corrupt_gzip.nii.gz", corrupt, "gzip"));
    let mut m = good.clone();
    m[344..348].copy_from_slice(b"xyz\0");
    cases.push(("bad_magic.nii", m, "magic"));
    let mut m = good.clone();
    m[0..4].copy_from_slice(&1234i32.to_le_bytes());
    cases.push(("bad_sizeof_hdr.nii", m, "not a NIfTI-1"));
    let mut m = good.clone();
    m[0..4].copy_from_slice(&540i32.to_le_bytes());
    cases.push(("nifti2.nii", m, "NIfTI-2"));
    let mut m = good.clone();
    set_i16(&mut m, 44, 0);
    cases.push(("zero_dim.nii", m, "dim[2] = 0"));
    let mut m = good.clone();
    set_i16(&mut m, 46, -6);
    cases.push(("negative_dim.nii", m, "dim[3] = -6"));
    let mut m = good.clone();
    set_i16(&mut m, 40, 9);
    cases.push(("dim0_9.nii", m, "dim[0] = 9"));
    let mut m = good.clone();
    for off in [42, 44, 46] {
        set_i16(&mut m, off, 32767);
    }
    cases.push(("huge.nii", m.clone(), "exceed"));
    cases.push(("huge.nii.gz", gz(&m), "exceed"));
    let mut m = good.clone();
    set_i16(&mut m, 42, 2000);
    set_i16(&mut m, 44, 2000);
    cases.push(("big_for_its_size.nii.gz", gz(&m), "more than"));
    let mut m = good.clone();
    set_i16(&mut m, 70, 32); // complex64
    set_i16(&mut m, 72, 64);
    cases.push(("complex.nii", m, "complex64"));
    let mut m = good.clone();
    set_i16(&mut m, 72, 8);
    cases.push(("bitpix.nii", m, "bitpix"));
    let mut m = good.clone();
    m[108..112].copy_from_slice(&f32::NAN.to_le_bytes());
    cases.push(("nan_vox_offset.nii", m, "vox_offset"));
    let mut m = good.clone();
    m[80..84].copy_from_slice(&0f32.to_le_bytes());
    cases.push(("zero_pixdim.nii", m, "pixdim[1]"));
    let mut m = good.clone();
    set_i16(&mut m, 40, 4);
    set_i16(&mut m, 48, 2);
    m.extend(vec![0u8; 4 * 5 * 6 * 4]); // a complete second time point
    cases.push(("four_d.nii", m, "only 3D"));

    for (name, bytes, want) in &cases {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        expect_err(&p, name, want, nifti::read_nifti);
        // The in-memory reader agrees.
        let b = bytes.clone();
        let n = PathBuf::from(name);
        let r = std::panic::catch_unwind(move || nifti::read_nifti_bytes(&n, &b).map(|i| i.volume));
        assert!(
            matches!(r, Ok(Err(_))),
            "{name}: read_nifti_bytes did not refuse it"
        );
    }
    expect_err(
        &d.path().join("missing.nii"),
        "missing.nii",
        "no such file",
        nifti::read_nifti,
    );
}

/// A copy of one slice of the reference CT series, for building broken series.
fn ct_slice() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ct_series");
    std::fs::read(dir.join("IMG0000.dcm")).unwrap()
}

#[test]
fn broken_dicom_folders_are_refused_with_their_name() {
    let d = tempfile::tempdir().unwrap();
    let read = |p: &Path| read_volume(p);

    let empty = d.path().join("empty_folder");
    std::fs::create_dir(&empty).unwrap();
    expect_err(&empty, "empty_folder", "no DICOM", read);

    let junk = d.path().join("junk_folder");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.txt"), b"hello").unwrap();
    std::fs::write(junk.join("b.dcm"), vec![0u8; 300]).unwrap();
    expect_err(&junk, "junk_folder", "no DICOM image", read);

    // A slice cut inside its pixel data.
    let cut = d.path().join("cut_series");
    std::fs::create_dir(&cut).unwrap();
    let s = ct_slice();
    std::fs::write(cut.join("cut.dcm"), &s[..s.len() - 1000]).unwrap();
    expect_err(&cut, "cut.dcm", "", read);

    // A slice with no PixelData (header only).
    let nopix = d.path().join("nopix_series");
    std::fs::create_dir(&nopix).unwrap();
    let pos = find_pixel_data_tag(&s);
    std::fs::write(nopix.join("nopix.dcm"), &s[..pos]).unwrap();
    expect_err(&nopix, "nopix.dcm", "PixelData", read);

    // Two slices of different sizes in one series.
    let mixed = d.path().join("mixed_sizes");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::write(mixed.join("a.dcm"), &s).unwrap();
    let mut small = s.clone();
    let rows = find_tag(&small, [0x28, 0x00, 0x10, 0x00]);
    // Explicit VR LE: tag(4) VR(2) len(2) value(2) -> Rows = 64.
    small[rows + 8..rows + 10].copy_from_slice(&64u16.to_le_bytes());
    std::fs::write(mixed.join("b.dcm"), &small).unwrap();
    expect_err(&mixed, "mixed_sizes", "inconsistent", read);

    // A series with a missing slice (IMG0004 holds the middle one): non-uniform spacing.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ct_series");
    let gap = d.path().join("gap_series");
    std::fs::create_dir(&gap).unwrap();
    for f in ["IMG0000.dcm", "IMG0001.dcm", "IMG0002.dcm", "IMG0003.dcm"] {
        std::fs::copy(src.join(f), gap.join(f)).unwrap();
    }
    expect_err(&gap, "gap_series", "not uniform", read);

    let r = std::panic::catch_unwind(|| dicom::list_series(&empty));
    assert!(matches!(r, Ok(Err(_))));
}

fn find_tag(b: &[u8], tag: [u8; 4]) -> usize {
    b.windows(4).position(|w| w == tag).unwrap()
}

fn find_pixel_data_tag(b: &[u8]) -> usize {
    b.windows(4)
        .rposition(|w| w == [0xe0, 0x7f, 0x10, 0x00])
        .unwrap()
}
