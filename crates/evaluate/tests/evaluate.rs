//! `evaluate` on tiny synthetic chest volumes written as NIfTI in a temporary folder.
//!
//! The volumes are built so that the expected scores can be worked out by hand: the
//! prediction is the target plus 10 HU inside the body, and the NCCT is the target with the
//! contrast-filled vessel at 40 HU instead of 350 HU.

use evaluate::{evaluate, EvalError, EvaluateConfig, Region, CSV_NAME, JSON_NAME};
use ndarray::Array3;
use std::path::{Path, PathBuf};
use volume::io::nifti::{write_nifti, write_nifti_mask};
use volume::{Geometry, Volume};

const SHAPE: (usize, usize, usize) = (12, 40, 40);
const SPACING: f64 = 8.0;

struct Chest {
    target: Array3<f32>,
    pred: Array3<f32>,
    ncct: Array3<f32>,
    vessel: Array3<u8>,
}

fn inside(y: usize, x: usize, cy: f64, cx: f64, ry: f64, rx: f64) -> bool {
    let (dy, dx) = ((y as f64 - cy) / ry, (x as f64 - cx) / rx);
    dy * dy + dx * dx <= 1.0
}

/// Body ellipse (40 HU with a gentle texture), two lungs (-850 HU), an artery (350 HU) in the
/// left lung, a rib (400 HU) one voxel outside the right lung; air (-1000 HU) around. `shift` moves the anatomy so two cases differ.
fn chest(shift: usize) -> Chest {
    let mut target = Array3::<f32>::from_elem(SHAPE, -1000.0);
    let mut pred = target.clone();
    let mut ncct = target.clone();
    let mut vessel = Array3::<u8>::zeros(SHAPE);
    for ((z, y, x), t) in target.indexed_iter_mut() {
        let body = inside(y, x, 20.0, 20.0 + shift as f64, 16.0, 18.0);
        if !body {
            continue;
        }
        let lung = inside(y, x, 19.0, 12.0 + shift as f64, 8.0, 5.0)
            || inside(y, x, 19.0, 28.0 + shift as f64, 8.0, 5.0);
        let artery = inside(y, x, 19.0, 12.0 + shift as f64, 2.0, 1.5);
        let rib = y == 19 && x == 34 + shift;
        let texture = ((z * 7 + y * 3 + x * 5) % 11) as f32;
        *t = if rib {
            400.0
        } else if artery {
            350.0 + texture
        } else if lung {
            -850.0 + texture
        } else {
            40.0 + texture
        };
        pred[[z, y, x]] = *t + 10.0;
        ncct[[z, y, x]] = if artery { 40.0 + texture } else { *t };
        vessel[[z, y, x]] = u8::from(artery);
    }
    Chest {
        target,
        pred,
        ncct,
        vessel,
    }
}

fn geometry(spacing: f64) -> Geometry {
    let mut g = Geometry::identity([spacing; 3]);
    g.origin = [-160.0, -160.0, 40.0];
    g
}

fn write_vol(path: &Path, data: &Array3<f32>, spacing: f64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_nifti(path, &Volume::new(data.clone(), geometry(spacing)).unwrap()).unwrap();
}

fn write_mask(path: &Path, data: &Array3<u8>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_nifti_mask(path, &Volume::new(data.clone(), geometry(SPACING)).unwrap()).unwrap();
}

/// Two cases (`a`, `b`), plus a prediction without a target (`orphan`).
fn dataset(root: &Path) -> [PathBuf; 4] {
    let [pred, target, ncct, vessels] = ["pred", "target", "ncct", "vessels"].map(|d| root.join(d));
    for (name, shift) in [("a", 0), ("b", 2)] {
        let c = chest(shift);
        write_vol(&pred.join(format!("{name}.nii.gz")), &c.pred, SPACING);
        write_vol(&target.join(format!("{name}.nii.gz")), &c.target, SPACING);
        write_vol(&ncct.join(format!("{name}.nii")), &c.ncct, SPACING);
        write_mask(&vessels.join(format!("{name}.nii.gz")), &c.vessel);
    }
    write_vol(&pred.join("orphan.nii.gz"), &chest(0).pred, SPACING);
    std::fs::write(pred.join("notes.txt"), "not a volume").unwrap();
    [pred, target, ncct, vessels]
}

fn config(root: &Path, given_vessels: bool) -> EvaluateConfig {
    let [pred, target, ncct, vessels] = dataset(root);
    let mut cfg = EvaluateConfig::new(pred, target);
    cfg.ncct_dir = Some(ncct);
    if given_vessels {
        cfg.masks.vessel_dir = Some(vessels);
    }
    cfg
}

#[test]
fn scores_match_hand_computed_values_and_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), true);
    let ev = evaluate(&cfg).unwrap();
    assert_eq!(ev.unpaired, vec!["orphan".to_owned()]);
    assert_eq!(ev.cases.len(), 2);
    let psnr_10 = 10.0 * (4095.0f64 * 4095.0 / 100.0).log10();
    for c in &ev.cases {
        let names: Vec<&str> = c.regions.iter().map(|r| r.region.as_str()).collect();
        assert_eq!(names, ["body", "lung", "vessel"]);
        let body = &c.regions[0];
        let lung = &c.regions[1];
        let vessel = &c.regions[2];
        let (bm, bb) = (body.model, body.baseline.unwrap());
        // The computed body mask is the body ellipse: the prediction is off by 10 HU everywhere.
        assert!(bm.voxels > 12 * 600, "{}: body {}", c.case, bm.voxels);
        assert!((bm.mae.unwrap() - 10.0).abs() < 1e-9, "{}", c.case);
        assert!((bm.psnr.unwrap() - psnr_10).abs() < 1e-9);
        // The given vessel mask: model 10 HU off, NCCT (no contrast) 310 HU off.
        let (vm, vb) = (vessel.model, vessel.baseline.unwrap());
        assert!(vm.voxels > 12 * 5);
        assert!((vm.mae.unwrap() - 10.0).abs() < 1e-9);
        assert!((vb.mae.unwrap() - 310.0).abs() < 1e-9);
        assert!(vm.ssim.unwrap() > vb.ssim.unwrap());
        // The computed lung mask holds the artery: the baseline's lung error is 310 HU times
        // the artery's share of the lung.
        let (lm, lb) = (lung.model, lung.baseline.unwrap());
        assert!((lm.mae.unwrap() - 10.0).abs() < 1e-9);
        let artery_in_lung = lb.mae.unwrap() * lm.voxels as f64 / 310.0;
        assert!(
            (artery_in_lung - vm.voxels as f64).abs() < 1e-6,
            "{}: lung mask holds {artery_in_lung} artery voxels of {}",
            c.case,
            vm.voxels
        );
        // Baseline outside the vessels is exact: body error comes from the artery only.
        assert!((bb.mae.unwrap() * bm.voxels as f64 / 310.0 - vm.voxels as f64).abs() < 1e-6);
    }

    let out = dir.path().join("eval");
    let (csv, json) = ev.write(&out).unwrap();
    assert_eq!(csv, out.join(CSV_NAME));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "case,region,voxels,metric,model,baseline");
    assert_eq!(lines.len(), 1 + 2 * 3 * 4);
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("b,vessel,") && l.contains(",mae,"))
        .unwrap()
        .split(',')
        .collect();
    assert!((row[4].parse::<f64>().unwrap() - 10.0).abs() < 1e-9);
    assert!((row[5].parse::<f64>().unwrap() - 310.0).abs() < 1e-9);

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(json, out.join(JSON_NAME));
    assert_eq!(summary["format"], "ncct2ctpa-evaluation");
    assert_eq!(summary["cases"], serde_json::json!(["a", "b"]));
    let rows = summary["summary"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    // the signed error: the model is 10 HU above the target, the NCCT 310 HU below it
    let vessel_me = rows
        .iter()
        .find(|r| r["region"] == "vessel" && r["metric"] == "me")
        .unwrap();
    assert!((vessel_me["model"]["mean"].as_f64().unwrap() - 10.0).abs() < 1e-9);
    assert!((vessel_me["baseline"]["mean"].as_f64().unwrap() + 310.0).abs() < 1e-9);
    assert_eq!(vessel_me["model_better"], 2);
    // the artery is 350 HU plus a texture of 0-10 HU
    let t = vessel_me["target_mean"]["mean"].as_f64().unwrap();
    assert!((350.0..=360.0).contains(&t), "{t}");
    let vessel_mae = rows
        .iter()
        .find(|r| r["region"] == "vessel" && r["metric"] == "mae")
        .unwrap();
    assert_eq!(vessel_mae["model"]["n"], 2);
    assert!((vessel_mae["baseline"]["mean"].as_f64().unwrap() - 310.0).abs() < 1e-9);
    assert_eq!(vessel_mae["model_better"], 2);
    assert!(summary["regions"][2]["masks"]
        .as_str()
        .unwrap()
        .starts_with("given:"));
    let table = ev.table();
    assert!(
        table.contains("vessel") && table.contains("310.00 ± 0.00"),
        "{table}"
    );
}

#[test]
fn derived_vessel_mask_is_the_enhanced_artery() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), false);
    cfg.regions = vec![Region::Vessel];
    let derived = evaluate(&cfg).unwrap();
    cfg.masks.vessel_dir = Some(dir.path().join("vessels"));
    let given = evaluate(&cfg).unwrap();
    for (d, g) in derived.cases.iter().zip(&given.cases) {
        // Only the artery exceeds 150 HU, and it lies in the (dilated) lung mask.
        assert_eq!(d.regions[0].model.voxels, g.regions[0].model.voxels);
        assert_eq!(d.regions[0].model, g.regions[0].model);
    }
    assert!(derived.regions[0]
        .masks
        .starts_with("derived: target > 150 HU"));
}

#[test]
fn custom_mask_folders_and_region_selection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), false);
    cfg.ncct_dir = None;
    // The vessel folder used as a custom region, named after the folder.
    cfg.regions = vec![Region::custom(&dir.path().join("vessels")), Region::Body];
    let ev = evaluate(&cfg).unwrap();
    let r = &ev.cases[0].regions;
    assert_eq!(r[0].region, "vessels");
    assert!(r[0].baseline.is_none());
    assert!((r[0].model.mae.unwrap() - 10.0).abs() < 1e-9);
    let mut csv = Vec::new();
    evaluate::report::write_csv(&ev.cases, &mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    assert!(text.lines().nth(1).unwrap().ends_with(",10,"), "{text}");
}

#[test]
fn mismatched_grids_are_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), true);
    let bad = cfg.pred_dir.join("b.nii.gz");
    write_vol(&bad, &chest(2).pred, SPACING * 1.1);
    let err = evaluate(&cfg).unwrap_err();
    assert!(matches!(err, EvalError::GridMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pred/b.nii.gz") && msg.contains("target/b.nii.gz"),
        "{msg}"
    );
    assert!(msg.contains("spacing"), "{msg}");
}

#[test]
fn no_pairs_missing_ncct_and_unreadable_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), true);

    let mut none = cfg.clone();
    none.target_dir = dir.path().join("vessels_as_targets_none");
    std::fs::create_dir_all(&none.target_dir).unwrap();
    let err = evaluate(&none).unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::NoPairs {
                n_pred: 3,
                n_target: 0,
                ..
            }
        ),
        "{err}"
    );

    std::fs::remove_file(cfg.ncct_dir.as_ref().unwrap().join("b.nii")).unwrap();
    let err = evaluate(&cfg).unwrap_err();
    assert!(
        matches!(err, EvalError::MissingFile { ref case, .. } if case == "b"),
        "{err}"
    );

    let mut cfg = config(dir.path(), true);
    cfg.ncct_dir = None;
    std::fs::write(cfg.target_dir.join("a.nii.gz"), b"garbage").unwrap();
    let err = evaluate(&cfg).unwrap_err();
    assert!(matches!(err, EvalError::Volume(_)), "{err}");
    assert!(err.to_string().contains("a.nii.gz"), "{err}");

    let mut cfg = config(dir.path(), true);
    cfg.pred_dir = dir.path().join("missing");
    assert!(matches!(
        evaluate(&cfg).unwrap_err(),
        EvalError::NotAFolder(_)
    ));
}
