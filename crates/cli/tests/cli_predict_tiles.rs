//! `predict --tile` and `--tta`: sliding-window inference on tiles of the training crop and
//! test-time mirroring (#16), end to end (the blending and the views themselves are tested in
//! `infer::tiles`, `infer::tta` and `infer::predict`); without them, what the run's validation
//! ran (`[inference]`, recorded in the checkpoint).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn predict(run: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["predict", "--model", s(run), "--input", s(input)])
        .args(["--output", s(output), "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

fn max_abs(a: &Path, b: &Path) -> f32 {
    let read = |p: &Path| volume::io::nifti::read_nifti_file(p).unwrap().volume.data;
    (read(a) - read(b))
        .mapv(f32::abs)
        .fold(0.0f32, |m, v| m.max(*v))
}

#[test]
fn predict_runs_the_tiles_validation_ran_unless_told_and_bad_tiles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let run = tmp.path().join("run");
    // the tiny preset (depth 3: multiples of 8) on 32 px crops
    let out = bin()
        .args(common::tiny_train(&data, &run, "2"))
        .args(["--batch-size", "2", "--crop-size", "32", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a 3 x 80 x 72 NCCT: body-like values with structure, so tiles see different statistics
    let hu = ndarray::Array3::from_shape_fn((3, 80, 72), |(z, y, x)| {
        -950.0 + 25.0 * ((y * 5 + x * 3 + z * 7) % 60) as f32
    });
    let ncct = tmp.path().join("ncct.nii.gz");
    let geometry = volume::Geometry::identity([0.8, 0.8, 2.0]);
    volume::io::nifti::write_nifti(&ncct, &volume::Volume::new(hu, geometry).unwrap()).unwrap();

    let path = |name: &str| tmp.path().join(format!("{name}.nii.gz"));
    let run_all = |runs: &[(&str, &[&str])]| {
        for (name, extra) in runs {
            let o = predict(&run, &ncct, &path(name), extra);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    };
    run_all(&[
        ("default", &[]),
        ("whole", &["--tile", "whole"]),
        ("auto", &["--tile", "auto"]),
        ("px32", &["--tile", "32", "--tile-step", "0.5"]),
        ("none", &["--tta", "none"]),
        ("whole_none", &["--tile", "whole", "--tta", "none"]),
        ("tta", &["--tta"]),
        ("flip", &["--tta", "flip"]),
        ("tta_auto", &["--tta", "auto"]),
        ("full", &["--tta", "full"]),
    ]);
    let d = |a: &str, b: &str| max_abs(&path(a), &path(b));
    // auto is the training crop, and the default: the run validated on it (`[inference]`'s
    // default); tiles of an instance-norm G differ from the whole slice
    assert_eq!(d("auto", "px32"), 0.0);
    assert_eq!(d("default", "auto"), 0.0);
    assert!(d("auto", "whole") > 0.01, "{}", d("auto", "whole"));
    // the run mirrored left-right in training (`[data.augment]`'s default), so its validation
    // and `predict` average the slice and its mirror (`[inference] tta = "auto"`): a bare
    // --tta, `flip` and `auto`; `none` is one pass, `full` adds rotations
    for same in ["tta", "flip", "tta_auto"] {
        assert_eq!(d("default", same), 0.0, "{same}");
    }
    assert!(d("default", "none") > 0.01 && d("full", "flip") > 0.01);

    // a checkpoint written before runs recorded `tta` was validated in one pass, and predicts
    // so; one from before `[inference]` on whole slices
    let edit_checkpoints = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        for ckpt in std::fs::read_dir(run.join("checkpoints")).unwrap() {
            let ckpt = ckpt.unwrap().path();
            let state = ckpt.join("state.json");
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
            f(json["config"].as_object_mut().unwrap());
            std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
            let _ = std::fs::remove_file(ckpt.join("checksums.json"));
        }
    };
    edit_checkpoints(&|config| {
        let inference = config["inference"].as_object_mut().unwrap();
        assert_eq!(inference["tile"], "auto");
        assert_eq!(inference.remove("tta").unwrap(), "auto");
    });
    run_all(&[("before_tta", &[])]);
    assert_eq!(d("before_tta", "none"), 0.0);
    edit_checkpoints(&|config| assert!(config.remove("inference").is_some()));
    run_all(&[("old", &[])]);
    assert_eq!(d("old", "whole_none"), 0.0);

    // a tile G cannot run: the reason and the model named, nothing written
    let never = tmp.path().join("never.nii.gz");
    let o = predict(&run, &ncct, &never, &["--tile", "36"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("multiple of 8") && stderr.contains(s(&run)),
        "{stderr}"
    );
    assert!(!never.exists());
    for (extra, says) in [
        (
            &["--tile", "0"][..],
            "tile size in pixels, 'auto' or 'whole'",
        ),
        (&["--tile", "32", "--tile-step", "1.5"][..], "(0, 1]"),
        (&["--tile-step", "1.5"][..], "(0, 1]"),
        (&["--tta", "mirror"][..], "none, auto, flip or full"),
    ] {
        let o = predict(&run, &ncct, &never, extra);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!never.exists());
    }
}
