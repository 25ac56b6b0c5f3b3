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

/// #15 item 2: DICOM export folders with several series: `--series-description` chooses the
/// same series in every case, and the case's meta says which and why.
#[test]
fn a_series_rule_chooses_in_every_case_and_is_recorded() {
    use volume::io::dicom::{write_series, SeriesInfo};
    let dir = tempfile::tempdir().unwrap();
    let (nii, raw, out) = (
        dir.path().join("nii"),
        dir.path().join("raw"),
        dir.path().join("prep"),
    );
    let o = ncct2ctpa(&["synth", "--out", s(&nii), "--cases", "1", "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o).1);
    for kind in ["ncct", "ctpa"] {
        let v = volume::io::read_volume(&nii.join(kind).join("case_000.nii.gz")).unwrap();
        let folder = raw.join(kind).join("case_000");
        std::fs::create_dir_all(&folder).unwrap();
        // two reconstructions in one folder; the lung one is darker, to tell them apart
        for (desc, shift) in [("Thorax 1.0 soft", 0.0f32), ("Thorax 1.0 lung", -100.0)] {
            let series = dir.path().join(format!("{kind}-{shift}"));
            let shifted = volume::Volume::new(v.data.mapv(|x| x + shift), v.geometry).unwrap();
            write_series(&series, &shifted, None, &SeriesInfo::described(desc)).unwrap();
            for f in std::fs::read_dir(&series).unwrap() {
                let f = f.unwrap().path();
                let name = format!("{shift}-{}", f.file_name().unwrap().to_string_lossy());
                std::fs::rename(&f, folder.join(name)).unwrap();
            }
        }
    }
    let o = ncct2ctpa(&[
        "prepare",
        s(&raw),
        "--out",
        s(&out),
        "--split",
        "1,0,0",
        "--align",
        "none",
        "--series-description",
        "soft",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cases/case_000/meta.json")).unwrap())
            .unwrap();
    for kind in ["ncct_series", "ctpa_series"] {
        assert_eq!(
            meta[kind]["description"], "Thorax 1.0 soft",
            "{kind}: {meta}"
        );
        let reason = meta[kind]["reason"].as_str().unwrap();
        assert!(reason.contains("description /soft/"), "{reason}");
        let passed = &meta[kind]["passed_over"][0][1];
        assert!(
            passed.as_str().unwrap().contains("does not match /soft/"),
            "{passed}"
        );
    }
    assert_eq!(meta["settings"]["series"]["description"], "soft");
    // a bad pattern is refused before anything is read
    let o = ncct2ctpa(&["prepare", s(&raw), "--out", s(&out), "--series-kernel", "("]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("series kernel pattern"),
        "{}",
        text(&o).1
    );
    let o = ncct2ctpa(&[
        "prepare",
        s(&raw),
        "--out",
        s(&out),
        "--series-thickness",
        "1..2",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("expected MIN:MAX"), "{}", text(&o).1);
}
