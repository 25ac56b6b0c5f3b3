//! #15 item 3 end to end: `predict`'s outputs say they are synthetic and which model made
//! them (the tag-level checks against pydicom's reading of the reference are in
//! `crates/volume/tests/io_dicom_provenance.rs`).

mod common;

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// `predict --model RUN --input NCCT --output OUT --device cpu EXTRA...`, which must succeed.
fn predict(run: &Path, input: &Path, output: &Path, extra: &[&str]) {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    ok(bin()
        .args([
            "predict",
            "--model",
            &s(run),
            "--input",
            &s(input),
            "--output",
            &s(output),
        ])
        .args(["--device", "cpu"])
        .args(extra));
}

/// Trains the tiny preset for 2 steps (batch 2, 32 px crops, 1 thread, the given seed) into
/// `run`, which must succeed.
fn train_two_steps(data: &Path, run: &Path, seed: &str) {
    ok(bin().args(common::tiny_train(data, run, "2")).args([
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "--threads",
        "1",
        "--seed",
        seed,
    ]));
}

/// The header of the first file of a written series.
fn first_header(series: &Path) -> volume::io::dicom::scan::SliceHeader {
    let first = std::fs::read_dir(series)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    volume::io::dicom::scan::read_header(&first).unwrap()
}

#[test]
fn dicom_and_nifti_outputs_name_the_model_and_say_synthetic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let run = tmp.path().join("runs/provenance-test");
    train_two_steps(&data, &run, "1");
    let ncct = Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume/tests/data/dicom/ct_series");
    let series = tmp.path().join("synthetic-series");
    predict(&run, &ncct, &series, &["--format", "dicom"]);
    let h = first_header(&series);
    assert_eq!(h.description, infer::provenance::SERIES_DESCRIPTION);
    assert_eq!(h.image_type, ["DERIVED", "SECONDARY", "AXIAL"]);
    // the input's study, unless --new-study
    let src = volume::io::dicom::read_series(&ncct, None).unwrap();
    let src_header = volume::io::dicom::scan::read_header(
        &std::fs::read_dir(&ncct)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                volume::io::dicom::scan::read_header(p)
                    .is_ok_and(|h| h.series_uid == src.series_uid)
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(h.study_uid, src_header.study_uid);
    let series2 = tmp.path().join("synthetic-new-study");
    predict(&run, &ncct, &series2, &["--format", "dicom", "--new-study"]);
    let h2 = first_header(&series2);
    assert_ne!(h2.study_uid, src_header.study_uid);

    let nii = tmp.path().join("synthetic.nii.gz");
    predict(&run, &ncct, &nii, &[]);
    let header = volume::io::nifti::read_nifti_file(&nii).unwrap().header;
    assert!(
        header.descrip.starts_with("SYNTHETIC CTPA ncct2ctpa ")
            && header.descrip.contains("run provenance-test best@2"),
        "{}",
        header.descrip
    );
}

/// `predict` with `--model` twice: the output is the voxel-wise mean of the two models'
/// predictions (which differ), and says it is the mean of both; a model that cannot be loaded
/// stops it naming the path, before anything is written.
#[test]
fn two_models_predict_the_mean_of_their_predictions_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let runs: Vec<_> = ["seed-a", "seed-b"]
        .iter()
        .zip(["1", "2"])
        .map(|(name, seed)| {
            let run = tmp.path().join("runs").join(name);
            train_two_steps(&data, &run, seed);
            run
        })
        .collect();
    let ncct = Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume/tests/data/dicom/ct_series");
    let read = |p: &Path| volume::io::nifti::read_nifti_file(p).unwrap();
    let (a, b, mean) = (
        tmp.path().join("a.nii.gz"),
        tmp.path().join("b.nii.gz"),
        tmp.path().join("mean.nii.gz"),
    );
    predict(&runs[0], &ncct, &a, &[]);
    predict(&runs[1], &ncct, &b, &[]);
    predict(
        &runs[0],
        &ncct,
        &mean,
        &["--model", runs[1].to_str().unwrap()],
    );
    let (va, vb, vm) = (read(&a), read(&b), read(&mean));
    let (da, db, dm) = (
        va.volume.data.mapv(f64::from),
        vb.volume.data.mapv(f64::from),
        vm.volume.data.mapv(f64::from),
    );
    let apart = (&da - &db).mapv(f64::abs).fold(0.0f64, |m, v| m.max(*v));
    assert!(
        apart > 1.0,
        "the two models must differ for this test: {apart} HU"
    );
    let off = (&dm - (&da + &db) / 2.0)
        .mapv(f64::abs)
        .fold(0.0f64, |m, v| m.max(*v));
    assert!(
        off < 1e-3,
        "the ensemble is {off} HU from the mean of its members"
    );
    assert_eq!(vm.volume.geometry, va.volume.geometry);
    let d = &vm.header.descrip;
    assert!(
        d.contains("mean of 2: run seed-a best@2, run seed-b best@2"),
        "{d}"
    );
    // a second model that is not there: named, nothing written
    let none = tmp.path().join("runs/missing");
    let out = tmp.path().join("never.nii.gz");
    let o = bin()
        .args(["predict", "--model", runs[0].to_str().unwrap(), "--model"])
        .args([none.to_str().unwrap(), "--input", ncct.to_str().unwrap()])
        .args(["--output", out.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains(none.to_str().unwrap()), "{stderr}");
    assert!(!out.exists());
}
