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

/// The (step, loss_g) of every train event of a run.
fn train_losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "train")
        .map(|e| (e["step"].as_u64().unwrap(), e["loss_g"].to_string()))
        .collect()
}

/// #13 item 9: SIGTERM (as a scheduler preempting the job) finishes the step, writes
/// checkpoints/latest, exits 75; `--resume` continues and the curve equals an uninterrupted
/// run's. Also item 13: `--resume --device cpu` is accepted, other training flags are refused.
#[test]
fn sigterm_checkpoints_and_exits_75_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset::fixtures::synthetic_dataset(&tmp.path().join("data"), 2).unwrap();
    let (straight, stopped) = (tmp.path().join("straight"), tmp.path().join("stopped"));
    let args = |run: &Path| {
        let mut a = train_args(&data, run);
        let steps = a.iter().position(|s| s == "--steps").unwrap();
        a[steps + 1] = "300".into();
        let every = a.iter().position(|s| s == "--checkpoint-every").unwrap();
        a[every + 1] = "1000".into();
        let val = a.iter().position(|s| s == "--val-every").unwrap();
        a[val + 1] = "1000".into();
        a
    };
    assert!(bin()
        .args(args(&straight))
        .output()
        .unwrap()
        .status
        .success());

    let child = bin()
        .args(args(&stopped))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = stopped.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|t| t.matches("\"train\"").count())
        .unwrap_or(0)
        < 5
    {
        assert!(t0.elapsed().as_secs() < 120, "the run never logged 5 steps");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let logged = train_losses(&stopped).len() as u64;
    assert!(logged < 300, "the run was not stopped early");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(stopped.join("checkpoints/latest/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"].as_u64(), Some(logged));

    // flags that change training are refused on resume; where it runs is not
    let refused = bin()
        .args(["train", "--run", &stopped.display().to_string(), "--resume"])
        .args(["--data", &data.display().to_string(), "--lr", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("optim.generator.lr"), "{msg}");
    let resumed = bin()
        .args(["train", "--run", &stopped.display().to_string(), "--resume"])
        .args(["--data", &data.display().to_string(), "--device", "cpu"])
        .args(["--no-progress"])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(train_losses(&straight), train_losses(&stopped));
}
