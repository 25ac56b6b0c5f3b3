//! `info` and `convert` through the real binary, in temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
}

fn volume_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume/tests/data")
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, so, se)
}

#[test]
fn info_json_of_a_dicom_folder_lists_its_series() {
    let dir = volume_data().join("dicom/ct_series");
    let (out, so, se) = run(bin().args(["info", "--json"]).arg(&dir));
    assert!(out.status.success(), "{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["format"], "DICOM");
    assert_eq!(v["size"], serde_json::json!([128, 128, 5]));
    assert_eq!(v["series_uid"], "2.25.1234567890123456789");
    assert_eq!(v["series"].as_array().unwrap().len(), 2);
    assert!((v["spacing"][2].as_f64().unwrap() - 2.5).abs() < 1e-9);
}

#[test]
fn info_text_of_a_nifti_file() {
    let f = volume_data().join("nifti/anatomical.nii");
    let (out, so, se) = run(bin().arg("info").arg(&f));
    assert!(out.status.success(), "{se}");
    assert!(so.contains("NIfTI-1") && so.contains("int16"), "{so}");
    assert!(so.contains("2.0000 x 2.0000 x 2.0000 mm"), "{so}");
}

#[test]
fn convert_writes_nifti_that_reads_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("ct.nii.gz");
    let dir = volume_data().join("dicom/ct_series");
    let (out, _, se) = run(bin().arg("convert").arg(&dir).arg("--out").arg(&out_path));
    assert!(out.status.success(), "{se}");
    let back = volume::io::nifti::read_nifti(&out_path).unwrap();
    let orig = volume::io::dicom::read_series(&dir, None).unwrap().volume;
    assert_eq!(back.data, orig.data);
    assert!(back.geometry.approx_eq(&orig.geometry, 1e-4));
    // Nothing else (no temporary) is left in the output folder.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn errors_name_the_file_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.nii");
    std::fs::write(&bad, b"definitely not nifti").unwrap();
    let (out, _, se) = run(bin().arg("info").arg(&bad));
    assert!(!out.status.success());
    // the unknown format names both formats it was tried as (#15)
    assert!(
        se.contains("broken.nii") && se.contains("NIfTI-1") && se.contains("DICOM"),
        "{se}"
    );

    let empty = tmp.path().join("empty_dir");
    std::fs::create_dir(&empty).unwrap();
    let target = tmp.path().join("x.nii.gz");
    let (out, _, se) = run(bin().arg("convert").arg(&empty).arg("--out").arg(&target));
    assert!(!out.status.success());
    assert!(se.contains("empty_dir") && se.contains("no DICOM"), "{se}");
    assert!(!target.exists(), "no output for a failed conversion");

    let (out, _, se) = run(bin()
        .arg("convert")
        .arg(&bad)
        .arg("--out")
        .arg(tmp.path().join("x.txt")));
    assert!(!out.status.success());
    assert!(se.contains("x.txt"), "{se}");
}

/// #15: `info` and `convert` take a single DICOM file, whatever its name (they answered "not a
/// NIfTI-1 file" for `slice.dcm`); the conversion equals the folder's.
#[test]
fn a_single_dicom_file_is_read_by_its_content() {
    let tmp = tempfile::tempdir().unwrap();
    let slice = tmp.path().join("slice.dcm");
    std::fs::copy(volume_data().join("dicom/CT_small/CT_small.dcm"), &slice).unwrap();
    let (out, so, se) = run(bin().args(["info", "--json"]).arg(&slice));
    assert!(out.status.success(), "{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["format"], "DICOM");
    assert_eq!(v["size"], serde_json::json!([128, 128, 1]));

    let (a, b) = (tmp.path().join("a.nii.gz"), tmp.path().join("b.nii.gz"));
    let (out, _, se) = run(bin().args(["convert"]).arg(&slice).arg("--out").arg(&a));
    assert!(out.status.success(), "{se}");
    let folder = volume_data().join("dicom/CT_small");
    let (out, _, se) = run(bin().args(["convert"]).arg(&folder).arg("--out").arg(&b));
    assert!(out.status.success(), "{se}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
