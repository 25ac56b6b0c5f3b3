//! `ncct2ctpa evaluate` end to end: the real binary on a phantom set in temporary folders.
//!
//! The phantom writes the CTPA as acquired (moved by a known deformation) and, under
//! `truth/ctpa_aligned`, the CTPA aligned with the NCCT. Scoring the aligned CTPA against
//! itself must be perfect; scoring the moved CTPA as if it were a prediction must not; and the
//! NCCT baseline must be worst in the contrast-filled vessels.

use std::path::Path;

mod common;
use common::{ncct2ctpa, s, text};

/// One row of evaluation.csv: (case, region, metric, model, baseline).
type Row = (String, String, String, Option<f64>, Option<f64>);

/// The rows of evaluation.csv.
fn rows(csv: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("case,region,voxels,metric,model,baseline")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            let num = |v: &str| (!v.is_empty()).then(|| v.parse::<f64>().unwrap());
            (f[0].into(), f[1].into(), f[3].into(), num(f[4]), num(f[5]))
        })
        .collect()
}

#[test]
fn evaluate_a_phantom_set_with_baseline_and_truth_masks() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let o = ncct2ctpa(&["synth", "--out", s(&raw), "--cases", "2", "--seed", "5"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let truth = raw.join("truth");

    // The moved CTPA scored as a "prediction" of the aligned one, with the NCCT baseline.
    let out = dir.path().join("eval");
    let o = ncct2ctpa(&[
        "evaluate",
        "--pred",
        s(&raw.join("ctpa")),
        "--target",
        s(&truth.join("ctpa_aligned")),
        "--ncct",
        s(&raw.join("ncct")),
        "--lung",
        s(&truth.join("lung")),
        "--vessels",
        s(&truth.join("vessels")),
        "--out",
        s(&out),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 case(s)"), "{stdout}");
    assert!(stdout.contains("NCCT baseline"), "{stdout}");
    for region in ["body", "lung", "vessel"] {
        assert!(stdout.lines().any(|l| l.starts_with(region)), "{stdout}");
    }
    let r = rows(&out.join("evaluation.csv"));
    assert_eq!(r.len(), 2 * 3 * 4);
    for (case, region, metric, model, baseline) in &r {
        let (m, b) = (model.unwrap(), baseline.unwrap());
        assert!(m.is_finite() && b.is_finite(), "{case} {region} {metric}");
        if region == "vessel" && metric == "mae" {
            // Contrast (300-450 HU) is missing from the NCCT: a large error there.
            assert!(b > 150.0, "{case}: NCCT vessel MAE {b}");
            assert!(m < b, "{case}: moved CTPA {m} vs NCCT {b}");
        }
        if metric == "ssim" {
            assert!(m < 1.0 && m > 0.0 && b < 1.0, "{case} {region}: {m} {b}");
        }
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("evaluation.json")).unwrap()).unwrap();
    assert_eq!(summary["cases"].as_array().unwrap().len(), 2);
    assert_eq!(summary["config"]["score"]["window"]["hi"], 3071.0);

    // The aligned CTPA against itself, derived vessels, axial SSIM, output into --pred's folder.
    let pred = dir.path().join("same");
    std::fs::create_dir_all(&pred).unwrap();
    for entry in std::fs::read_dir(truth.join("ctpa_aligned")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, pred.join(p.file_name().unwrap())).unwrap();
    }
    let o = ncct2ctpa(&[
        "evaluate",
        "--pred",
        s(&pred),
        "--target",
        s(&truth.join("ctpa_aligned")),
        "--mask",
        "body",
        "--mask",
        "vessel",
        "--ssim",
        "axial",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let r = rows(&pred.join("evaluation.csv"));
    assert_eq!(r.len(), 2 * 2 * 4);
    for (case, region, metric, model, baseline) in &r {
        assert!(baseline.is_none());
        let m = model.unwrap_or_else(|| panic!("{case} {region} {metric}: empty"));
        match metric.as_str() {
            "mae" | "me" => assert_eq!(m, 0.0),
            "psnr" => assert_eq!(m, f64::INFINITY),
            _ => assert!((m - 1.0).abs() < 1e-12, "{case} {region} ssim {m}"),
        }
    }
}

#[test]
fn evaluate_fails_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, target) = (dir.path().join("pred"), dir.path().join("target"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&target).unwrap();

    // Zero pairs.
    let o = ncct2ctpa(&["evaluate", "--pred", s(&pred), "--target", s(&target)]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("no case to score"), "{stderr}");

    // An unreadable file names itself.
    std::fs::write(pred.join("x.nii.gz"), b"not gzip").unwrap();
    std::fs::write(target.join("x.nii.gz"), b"not gzip").unwrap();
    let o = ncct2ctpa(&["evaluate", "--pred", s(&pred), "--target", s(&target)]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("x.nii.gz"), "{stderr}");

    // A --mask that is neither a region nor a folder.
    let o = ncct2ctpa(&[
        "evaluate",
        "--pred",
        s(&pred),
        "--target",
        s(&target),
        "--mask",
        "heart",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--mask heart"), "{}", text(&o).1);

    // A bad window.
    let o = ncct2ctpa(&[
        "evaluate",
        "--pred",
        s(&pred),
        "--target",
        s(&target),
        "--window",
        "100,-100",
    ]);
    assert!(!o.status.success());
}
