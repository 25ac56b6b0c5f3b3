//! #15 item 4: `evaluate --model RUN --data PREPARED` gives exactly the numbers of `predict`
//! followed by `evaluate`, writes a montage per case, and names what is missing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = bin(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `case,region,metric` -> (model, baseline) of an evaluation.csv.
fn scores(csv: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                format!("{},{},{}", f[0], f[1], f[3]),
                f[4].into(),
                f[5].into(),
            )
        })
        .collect()
}

/// The scores of `predict --model CKPT` on `exported`'s NCCTs (with `extra`), evaluated
/// against its targets by `evaluate --pred` into `out`: `evaluate --model` by hand.
fn predict_then_evaluate(
    ckpt: &Path,
    exported: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<(String, String, String)> {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let preds = out.join("pred");
    let mut predict = vec!["predict".to_owned(), "--model".into(), s(ckpt)];
    predict.extend([
        "--input".into(),
        s(&exported.join("ncct")),
        "--output".into(),
        s(&preds),
    ]);
    predict.extend(["--device".into(), "cpu".into()]);
    predict.extend(extra.iter().map(|e| e.to_string()));
    ok(&predict.iter().map(String::as_str).collect::<Vec<_>>());
    let eval = out.join("eval");
    ok(&[
        "evaluate",
        "--pred",
        &s(&preds),
        "--target",
        &s(&exported.join("target")),
        "--ncct",
        &s(&exported.join("ncct")),
        "--out",
        &s(&eval),
    ]);
    scores(&eval.join("evaluation.csv"))
}

#[test]
fn one_command_equals_predict_then_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    let data = dataset::fixtures::synthetic_dataset(&t("data"), 3).unwrap();
    let run = t("run");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mut train = common::tiny_train(&data, &run, "3");
    train.extend(["--batch-size", "2", "--crop-size", "32", "--threads", "1"]);
    ok(&train);
    let one = t("one");
    // `evaluate --model RUN --data DATA` on the validation split's final checkpoint
    let evaluate_final = |extra: &[&str]| {
        let (run, data) = (s(&run), s(&data));
        let mut args = vec![
            "evaluate", "--model", &run, "--data", &data, "--split", "val",
        ];
        args.extend(["--checkpoint", "final", "--device", "cpu"]);
        args.extend(extra);
        ok(&args)
    };
    let stdout = evaluate_final(&["--out", &s(&one)]);
    assert!(stdout.contains("NCCT baseline"), "{stdout}");
    // the same by hand: predict the exported NCCTs with the same checkpoint, then evaluate
    let final_ckpt = run.join("checkpoints/final");
    let a = scores(&one.join("evaluation.csv"));
    let b = predict_then_evaluate(&final_ckpt, &one, &t("two"), &[]);
    assert!(!a.is_empty());
    assert_eq!(a, b, "evaluate --model must equal predict + evaluate");
    // one montage per case, a PNG
    let montages: Vec<_> = std::fs::read_dir(one.join("montage")).unwrap().collect();
    assert_eq!(
        montages.len(),
        std::fs::read_dir(one.join("pred")).unwrap().count()
    );
    let png = std::fs::read(montages[0].as_ref().unwrap().path()).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    // the predictions say what made them
    let pred = std::fs::read_dir(one.join("pred"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let descrip = volume::io::nifti::read_nifti_file(&pred)
        .unwrap()
        .header
        .descrip;
    assert!(descrip.contains("run run final@3"), "{descrip}");

    // by default on the tiles the run validated on (the training crop, 32 px); on whole
    // slices with --tile whole, beside them, and the same as predict --tile whole + evaluate
    let whole = evaluate_final(&["--tile", "whole"]);
    let three = run.join("evaluation/val-final-tile-whole");
    assert!(three.join("evaluation.csv").is_file(), "{whole}");
    let c = scores(&three.join("evaluation.csv"));
    let d = predict_then_evaluate(&final_ckpt, &one, &t("four"), &["--tile", "whole"]);
    assert_eq!(
        c, d,
        "evaluate --model --tile must equal predict --tile + evaluate"
    );
    let e = predict_then_evaluate(&final_ckpt, &one, &t("five"), &["--tile", "32"]);
    assert_eq!(a, e, "the run's tiles are the training crop's");
    assert_ne!(c, a, "tiles of an instance-norm G must change the scores");

    // by default with the mirror the run validated with; in one pass with --tta none, beside
    // the others, and the same as predict --tta none + evaluate
    let single = evaluate_final(&["--tta", "none"]);
    let six = run.join("evaluation/val-final-tta-none");
    assert!(six.join("evaluation.csv").is_file(), "{single}");
    let f = scores(&six.join("evaluation.csv"));
    let g = predict_then_evaluate(&final_ckpt, &one, &t("seven"), &["--tta", "none"]);
    assert_eq!(
        f, g,
        "evaluate --model --tta must equal predict --tta + evaluate"
    );
    let h = predict_then_evaluate(&final_ckpt, &one, &t("eight"), &["--tta", "flip"]);
    assert_eq!(a, h, "the run validated with the left-right mirror");
    assert_ne!(f, a, "the mirror must change the scores");
}

#[test]
fn a_missing_split_or_checkpoint_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let run = tmp.path().join("empty-run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    // `evaluate --model RUN --data DATA EXTRA...` must fail; its stderr
    let refused = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--model",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = bin(&args);
        assert!(!out.status.success(), "{extra:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(&["--split", "test"]);
    assert!(
        stderr.contains("the test split has no case") && stderr.contains("1 val"),
        "{stderr}"
    );
    let stderr = refused(&["--split", "val", "--checkpoint", "latest"]);
    assert!(
        stderr.contains("no checkpoints/latest (the run has none)"),
        "{stderr}"
    );
    // --model and --pred together are refused by the argument parser
    let out = bin(&["evaluate", "--model", "r", "--data", "d", "--pred", "p"]);
    assert!(!out.status.success());
}
