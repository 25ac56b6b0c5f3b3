//! Discovery and pairing of raw datasets: naming rules, missing halves, duplicates, empty
//! folders. Discovery reads no voxels, so placeholder files are enough here.

use dataset::raw::{discover, RawError, SourceKind};
use std::fs;
use std::path::Path;

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, b"placeholder").unwrap();
}

fn dicom_dir(path: &Path) {
    touch(&path.join("IM0001.dcm"));
}

fn reason_of<'a>(d: &'a dataset::raw::Discovery, case: &str) -> &'a str {
    &d.skipped
        .iter()
        .find(|s| s.case == case)
        .unwrap_or_else(|| panic!("{case} not skipped: {:?}", d.skipped))
        .reason
}

#[test]
fn pairs_nifti_and_dicom_folders_by_name_and_reports_missing_halves() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    touch(&r.join("ncct/a.nii.gz"));
    touch(&r.join("ctpa/a.nii.gz"));
    // Mixed storage: NCCT as a DICOM folder, CTPA as plain .nii.
    dicom_dir(&r.join("ncct/b"));
    touch(&r.join("ctpa/b.nii"));
    // DICOM files nested one level deeper still count.
    touch(&r.join("ncct/c/series1/IM1.dcm"));
    dicom_dir(&r.join("ctpa/c"));
    // Missing halves.
    touch(&r.join("ncct/only_ncct.nii.gz"));
    touch(&r.join("ctpa/only_ctpa.nii.gz"));
    // User lung mask for a.
    touch(&r.join("lung/a.nii.gz"));
    // Hidden files are ignored silently.
    touch(&r.join("ncct/.DS_Store"));

    let d = discover(r).unwrap();
    let names: Vec<&str> = d.pairs.iter().map(|p| p.case.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let a = &d.pairs[0];
    assert_eq!(a.ncct.kind, SourceKind::Nifti);
    assert_eq!(a.lung.as_deref(), Some(r.join("lung/a.nii.gz").as_path()));
    let b = &d.pairs[1];
    assert_eq!(b.ncct.kind, SourceKind::DicomDir);
    assert_eq!(b.ncct.path, r.join("ncct/b"));
    assert_eq!(b.ctpa.kind, SourceKind::Nifti);
    assert_eq!(b.ctpa.path, r.join("ctpa/b.nii"));
    assert!(d.pairs[1].lung.is_none());

    assert!(reason_of(&d, "only_ncct").contains("no CTPA"));
    assert!(reason_of(&d, "only_ctpa").contains("no NCCT"));
    assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
}

#[test]
fn duplicate_names_skip_the_case_naming_both_entries() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    touch(&r.join("ncct/a.nii"));
    touch(&r.join("ncct/a.nii.gz"));
    touch(&r.join("ctpa/a.nii.gz"));
    touch(&r.join("ncct/b.nii.gz"));
    dicom_dir(&r.join("ctpa/b"));
    touch(&r.join("ctpa/b.nii.gz"));
    touch(&r.join("ncct/ok.nii.gz"));
    touch(&r.join("ctpa/ok.nii.gz"));

    let d = discover(r).unwrap();
    assert_eq!(d.pairs.len(), 1);
    assert_eq!(d.pairs[0].case, "ok");
    let a = reason_of(&d, "a");
    assert!(
        a.contains("ambiguous") && a.contains("a.nii and") && a.contains("a.nii.gz"),
        "{a}"
    );
    let b = reason_of(&d, "b");
    assert!(b.contains("ctpa/b") && b.contains("b.nii.gz"), "{b}");
}

#[test]
fn empty_dicom_folders_and_foreign_files_are_reported() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("ncct/empty")).unwrap();
    touch(&r.join("ctpa/empty.nii.gz"));
    touch(&r.join("ncct/notes.txt"));
    touch(&r.join("ncct/x.nii.gz"));
    touch(&r.join("ctpa/x.nii.gz"));
    touch(&r.join("lung/orphan.nii.gz"));

    let d = discover(r).unwrap();
    assert_eq!(d.pairs.len(), 1);
    // Its NCCT folder was unusable, so the CTPA is reported as a missing half too.
    assert!(d
        .skipped
        .iter()
        .any(|s| s.case == "empty" && s.reason.contains("no NCCT")));
    assert!(d
        .skipped
        .iter()
        .any(|s| s.reason.contains("empty folder") && s.reason.contains("ncct/empty")));
    assert!(reason_of(&d, "notes.txt").contains("not a NIfTI"));
    assert!(reason_of(&d, "orphan").contains("lung mask"));
}

#[test]
fn empty_or_missing_folders_are_errors_naming_the_folder() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    // No ncct/ at all.
    let e = discover(r).unwrap_err();
    assert!(matches!(e, RawError::MissingFolder { .. }), "{e}");
    assert!(e.to_string().contains("ncct"), "{e}");

    // Both folders, nothing in them.
    fs::create_dir_all(r.join("ncct")).unwrap();
    fs::create_dir_all(r.join("ctpa")).unwrap();
    let e = discover(r).unwrap_err();
    assert!(matches!(e, RawError::NoPairs { .. }), "{e}");
    assert!(e.to_string().contains(&r.display().to_string()), "{e}");

    // Only unpaired halves: still no pairs, and the message says why.
    touch(&r.join("ncct/a.nii.gz"));
    let e = discover(r).unwrap_err().to_string();
    assert!(
        e.contains("1 entries skipped") && e.contains("no CTPA"),
        "{e}"
    );

    // Not a folder at all.
    let e = discover(&r.join("nope")).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}
