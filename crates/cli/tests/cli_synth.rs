//! `ncct2ctpa synth` end to end: the real binary in temporary folders.

use std::path::Path;
use std::process::{Command, Output};

fn synth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .arg("synth")
        .args(args)
        .output()
        .expect("run ncct2ctpa")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn synth_writes_the_raw_layout_and_a_preview() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phantoms");
    let o = synth(&[
        "--out",
        out.to_str().unwrap(),
        "--cases",
        "2",
        "--seed",
        "7",
        "--preview",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for folder in [
        "ncct",
        "ctpa",
        "truth/ctpa_aligned",
        "truth/displacement",
        "truth/lung",
        "truth/vessels",
        "truth/emboli",
    ] {
        for case in ["case_000", "case_001"] {
            let f = out.join(folder).join(format!("{case}.nii.gz"));
            let bytes = read(&f);
            // gzip magic, and more than a header.
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{}", f.display());
            assert!(bytes.len() > 1000, "{}", f.display());
        }
    }
    // A user's lung/ folder is not faked: prepare computes or is given masks.
    assert!(!out.join("lung").exists());
    let png = read(&out.join("preview/case_000.png"));
    assert_eq!(&png[1..4], b"PNG");
    let json: serde_json::Value = serde_json::from_slice(&read(&out.join("phantom.json"))).unwrap();
    assert_eq!(json["format"], "ncct2ctpa-phantom");
    assert_eq!(json["config"]["seed"], 7);
    assert_eq!(json["cases"].as_array().map(|a| a.len()), Some(2));
    // No temporary files are left behind.
    for entry in std::fs::read_dir(out.join("ncct")).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }
}

#[test]
fn synth_refuses_to_overwrite_without_force_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let args = [
        "--out",
        out.to_str().unwrap(),
        "--cases",
        "1",
        "--seed",
        "3",
    ];
    assert!(synth(&args).status.success());
    let first = read(&out.join("ctpa/case_000.nii.gz"));

    // A second run into the same folder is refused and touches nothing.
    let user_file = out.join("notes.txt");
    std::fs::write(&user_file, "mine").unwrap();
    let o = synth(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(read(&out.join("ctpa/case_000.nii.gz")), first);

    // With --force the same seed writes the same bytes, and the user's file stays.
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = synth(&forced);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out.join("ctpa/case_000.nii.gz")), first);
    assert_eq!(read(&user_file), b"mine");

    // Another seed gives other bytes.
    let other = dir.path().join("other");
    assert!(synth(&[
        "--out",
        other.to_str().unwrap(),
        "--cases",
        "1",
        "--seed",
        "4"
    ])
    .status
    .success());
    assert_ne!(read(&other.join("ctpa/case_000.nii.gz")), first);
}

#[test]
fn synth_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = synth(&["--out", out.to_str().unwrap(), "--misalignment=-3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("misalignment"));
    assert!(!out.join("ncct/case_000.nii.gz").exists());
    // Clap's usage errors exit with 2.
    let o = synth(&["--cases", "2"]);
    assert_eq!(o.status.code(), Some(2));
    let o = synth(&["--out", out.to_str().unwrap(), "--size", "huge"]);
    assert_eq!(o.status.code(), Some(2));
}
