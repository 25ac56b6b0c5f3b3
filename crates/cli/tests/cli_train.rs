//! `ncct2ctpa train` as a user runs it: on a tiny prepared dataset, into a fresh run folder,
//! refusing to reuse one, resuming, and failing loudly on a non-finite loss.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
}

fn train_args(data: &Path, run: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        &data.display().to_string(),
        "--run",
        &run.display().to_string(),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "--val-every",
        "2",
        "--checkpoint-every",
        "2",
        "--sample-every",
        "4",
        "--log-every",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn train_on_a_prepared_dataset_writes_a_complete_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 3).unwrap();
    let run = tmp.path().join("runs/t");
    let out = bin().args(train_args(&data, &run)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The summary table: model beside the NCCT baseline.
    assert!(
        stdout.contains("MAE body (HU)") && stdout.contains("NCCT"),
        "{stdout}"
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "train.log",
        "curves.png",
        "samples/step_000004.png",
        "checkpoints/final/state.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("steps = 4") && cfg.contains("preset = \"tiny\""),
        "{cfg}"
    );

    // The same folder again without --resume: refused, nothing touched.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let out = bin().args(train_args(&data, &run)).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resume"), "{stderr}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);

    // --resume of a finished run: nothing to do, success.
    let out = bin()
        .args([
            "train",
            "--data",
            &data.display().to_string(),
            "--run",
            &run.display().to_string(),
            "--resume",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_nan_loss_exits_non_zero_naming_step_and_term() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let run = tmp.path().join("run");
    let cfg = tmp.path().join("nan.toml");
    std::fs::write(&cfg, "preset = \"tiny\"\n").unwrap();
    let mut args = train_args(&data, &run);
    args.extend(["--config".to_string(), cfg.display().to_string()]);
    // The test hooks reach a binary through the environment only, never its config.
    let out = bin()
        .args(args)
        .env("NCCT2CTPA_TEST_HOOKS", "inject_nan_at_step=3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step 3") && stderr.contains("not finite"),
        "{stderr}"
    );
    assert!(run.join("debug/step_3/batch.safetensors").is_file());
}

#[test]
fn a_bad_config_key_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[data]\nbatchsize = 2\n").unwrap();
    let out = bin()
        .args([
            "train",
            "--data",
            "nowhere",
            "--config",
            &cfg.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("batchsize") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}
