//! #13 item 4: NaN/inf voxels are refused by every reader (naming the file, the count and the
//! first index), a broken voxel size is refused, and scanner padding below -1024 HU is read as
//! air by the CT reader and counted.

use ndarray::Array3;
use volume::io::nifti::{read_nifti, write_nifti};
use volume::io::{read_ct, AIR_HU};
use volume::{Geometry, Volume};

fn volume_with(values: &[(usize, f32)]) -> Volume {
    let mut data = Array3::from_elem((2, 3, 4), -500.0f32);
    for &(flat, v) in values {
        let (z, rest) = (flat / 12, flat % 12);
        data[[z, rest / 4, rest % 4]] = v;
    }
    Volume::new(data, Geometry::identity([1.0, 1.0, 2.0])).unwrap()
}

#[test]
fn nan_and_inf_voxels_are_refused_naming_file_count_and_first_index() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.nii.gz");
    // written raw: our writer does not check, so the reader must
    write_nifti(&path, &volume_with(&[(13, f32::NAN), (20, f32::INFINITY)])).unwrap();
    for err in [
        read_nifti(&path).unwrap_err().to_string(),
        read_ct(&path, None).unwrap_err().to_string(),
    ] {
        assert!(
            err.contains("bad.nii.gz") && err.contains("2 voxel(s)") && err.contains("[1, 0, 1]"),
            "{err}"
        );
    }
}

#[test]
fn scanner_padding_reads_as_air_and_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("padded.nii.gz");
    write_nifti(
        &path,
        &volume_with(&[(0, -3024.0), (5, -2048.0), (7, -1024.0)]),
    )
    .unwrap();
    let raw = read_nifti(&path).unwrap();
    assert_eq!(
        raw.data[[0, 0, 0]],
        -3024.0,
        "the plain reader keeps the values"
    );
    let ct = read_ct(&path, None).unwrap();
    assert_eq!(ct.data[[0, 0, 0]], AIR_HU);
    assert_eq!(ct.data[[0, 1, 1]], AIR_HU);
    assert_eq!(ct.data[[0, 1, 3]], -1024.0);
    assert_eq!(ct.data.iter().filter(|&&v| v == AIR_HU).count(), 3);
    let mut data = raw.data.clone();
    assert_eq!(volume::io::pad_to_air(&mut data), 2);
}

#[test]
fn a_subnormal_or_absurd_voxel_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for spacing in [1e-41f64, 1e-6, 1e6] {
        let path = tmp.path().join("s.nii");
        let mut v = volume_with(&[]);
        v.geometry.spacing = [spacing, 1.0, 1.0];
        write_nifti(&path, &v).unwrap();
        let err = read_nifti(&path).unwrap_err().to_string();
        assert!(
            err.contains("s.nii") && err.contains("voxel size"),
            "{spacing}: {err}"
        );
    }
}
