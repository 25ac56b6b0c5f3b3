//! A file is NIfTI or DICOM by its content, not its name (#15): a DICOM slice named anything
//! reads as a one-slice series, a NIfTI file named anything reads as NIfTI, and a file that
//! is neither is refused naming both formats.

use std::path::Path;
use volume::io::{read_volume, sniff, FileFormat};

fn data(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

#[test]
fn files_are_told_by_content_whatever_their_name() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = data("dicom/CT_small");
    let from_folder = read_volume(&folder).unwrap();
    let dcm = std::fs::read_dir(&folder)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for name in ["slice.dcm", "slice", "misleading.nii.gz"] {
        let p = tmp.path().join(name);
        std::fs::copy(&dcm, &p).unwrap();
        assert_eq!(sniff(&p).unwrap(), FileFormat::Dicom, "{name}");
        let v = read_volume(&p).unwrap();
        assert_eq!(v.data, from_folder.data, "{name}");
        assert_eq!(v.geometry, from_folder.geometry, "{name}");
    }

    let nifti = std::fs::read_dir(data("nifti"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".nii.gz"))
        .unwrap();
    let p = tmp.path().join("volume.dat");
    std::fs::copy(&nifti, &p).unwrap();
    assert_eq!(sniff(&p).unwrap(), FileFormat::Nifti);
    assert_eq!(
        read_volume(&p).unwrap().data,
        read_volume(&nifti).unwrap().data
    );

    let p = tmp.path().join("notes.txt");
    std::fs::write(
        &p,
        b"a text file that is neither format, long enough to be sniffed",
    )
    .unwrap();
    let err = read_volume(&p).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("NIfTI") && err.contains("DICOM"),
        "{err}"
    );
}
