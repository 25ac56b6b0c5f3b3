//! The GPU check's CPU-runnable parts (`scripts/gpu-check.sh --cpu --quick`, against this
//! build's binary) and the bundle's preflight, which must fail clearly where no GPU is
//! visible (#12). Needs python3, as `make setup` does.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_gpu_checks_cpu_dry_run_passes_and_reports() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(root().join("scripts/gpu-check.sh"))
        .args(["--cpu", "--quick", "--bin", env!("CARGO_BIN_EXE_ncct2ctpa")])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("gpu-check.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    for name in ["data", "train_fp32", "device", "resume", "predict_vs_cpu"] {
        assert_eq!(status(name).as_deref(), Some("pass"), "{name}: {report}");
    }
    assert!(out.path().join("gpu-check.md").is_file());
}

#[test]
fn the_preflight_fails_clearly_without_a_gpu() {
    let torch = root().join(".venv/libtorch");
    if !torch.join("version.py").is_file() {
        panic!("no {}: run `make setup`", torch.display());
    }
    let bundle = tempfile::tempdir().unwrap();
    std::fs::create_dir(bundle.path().join("bin")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_ncct2ctpa"),
        bundle.path().join("bin/ncct2ctpa"),
    )
    .unwrap();
    for f in ["scripts/bundle/preflight.sh", "scripts/torch-version.env"] {
        let src = root().join(f);
        std::fs::copy(&src, bundle.path().join(src.file_name().unwrap())).unwrap();
    }
    let o = Command::new("bash")
        .arg(bundle.path().join("preflight.sh"))
        .arg("--torch")
        .arg(&torch)
        .env("PATH", "/usr/bin:/bin") // no nvidia-smi here
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(fails[0].contains("no GPU visible"), "{stdout}");
    for ok in [
        "ok    glibc",
        "ok    PyTorch 2.11.0",
        "ok    PyTorch build",
        "ok    every library",
    ] {
        assert!(stdout.contains(ok), "{ok}: {stdout}");
    }
}
