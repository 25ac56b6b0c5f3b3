//! `ncct2ctpa prepare` end to end: the real binary on a phantom set in temporary folders.

mod common;
use common::{ncct2ctpa, s, text};

#[test]
fn prepare_a_phantom_set_then_rerun_keeps_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, out) = (dir.path().join("raw"), dir.path().join("prep"));
    let o = ncct2ctpa(&["synth", "--out", s(&raw), "--cases", "2", "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o).1);

    let o = ncct2ctpa(&[
        "prepare",
        s(&raw),
        "--out",
        s(&out),
        "--window",
        "-1000,1000",
        "--split",
        "0.5,0.5,0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    for case in ["case_000", "case_001"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no row for {case}:\n{stdout}"));
        assert!(line.contains("prepared") && line.contains("->"), "{line}");
    }
    assert!(stdout.contains("2 prepared"), "{stdout}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "complete");
    assert_eq!(m["window"]["min"], -1000.0);
    let splits: Vec<&str> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["split"].as_str().unwrap())
        .collect();
    assert_eq!(splits.len(), 2);
    assert!(
        splits.contains(&"train") && splits.contains(&"val"),
        "{splits:?}"
    );

    let o = ncct2ctpa(&[
        "prepare",
        s(&raw),
        "--out",
        s(&out),
        "--window",
        "-1000,1000",
        "--split",
        "0.5,0.5,0",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("2 kept as already prepared"), "{stdout}");
}

#[test]
fn no_usable_pairs_fails_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(raw.join("ncct")).unwrap();
    std::fs::create_dir_all(raw.join("ctpa")).unwrap();
    std::fs::write(raw.join("ncct/a.nii.gz"), b"x").unwrap();
    let out = dir.path().join("prep");
    let o = ncct2ctpa(&["prepare", s(&raw), "--out", s(&out)]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains(s(&raw)) && stderr.contains("no CTPA"),
        "{stderr}"
    );
    assert!(!out.join("manifest.json").exists());

    // Pairs that all fail to read: also an error, with the file named.
    std::fs::write(raw.join("ctpa/a.nii.gz"), b"not nifti").unwrap();
    let o = ncct2ctpa(&["prepare", s(&raw), "--out", s(&out)]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("no case could be prepared") && stderr.contains("a.nii.gz"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        ["--window", "500,-500"],
        ["--spacing", "1,1"],
        ["--split", "0.9,0.9,0.1"],
    ] {
        let o = ncct2ctpa(&[
            "prepare",
            s(dir.path()),
            "--out",
            s(dir.path()),
            bad[0],
            bad[1],
        ]);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(text(&o).1.contains(bad[0]), "{bad:?}: {}", text(&o).1);
    }
}

/// #13 item 5: a full disk (an injected ENOSPC on the new case's store) fails the prepare,
/// names the case and the error, and leaves the earlier manifest in force; the rerun reuses
/// what was prepared.
#[test]
fn a_full_disk_fails_the_prepare_and_keeps_the_earlier_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("prepared");
    let synth = |cases: &str| {
        let o = ncct2ctpa(&[
            "synth",
            "--out",
            raw.to_str().unwrap(),
            "--cases",
            cases,
            "--force",
        ]);
        assert!(o.status.success(), "{}", text(&o).1);
    };
    synth("2");
    let prepare = |fail: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
            .args([
                "prepare",
                raw.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .env(util::atomic::FAIL_WRITES_ENV, fail)
            .output()
            .unwrap()
    };
    assert!(prepare("").status.success());
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    synth("3"); // a third case arrives
    let failed = prepare("cases/case_002");
    let (_, stderr) = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("case_002") && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    let rerun = prepare("");
    let (stdout, stderr) = text(&rerun);
    assert!(rerun.status.success(), "{stderr}");
    assert!(stdout.contains("1 prepared, 2 kept"), "{stdout}");
}
