//! `prepare` on small synthetic NIfTI pairs: idempotence and redo rules, splits (seeded,
//! patient-level, split file), per-case failures; and end to end on the chest phantom
//! (lung mask Dice against the phantom's truth, rigid alignment improving similarity).

use dataset::manifest::split::SplitError;
use dataset::manifest::{
    AlignMode, IntensityWindow, SpacingMode, Split, SplitFractions, MANIFEST_FILE,
};
use dataset::prepare::{prepare, CaseStatus, PrepareError, PrepareOptions, SplitChoice};
use dataset::raw::discover;
use dataset::store::PreparedDataset;
use ndarray::Array3;
use std::collections::BTreeMap;
use std::path::Path;
use volume::io::nifti::write_nifti;
use volume::{Geometry, Volume};

/// A tiny chest: air, an elliptic body (40 HU), two lungs (-850 HU), a spine (700 HU).
/// `[z, y, x]` = `[10, 32, 40]`, 2.5 x 2.5 x 5 mm; `bright` adds contrast to a "vessel".
fn chest(bright: f32) -> Volume {
    let data = Array3::from_shape_fn((10, 32, 40), |(z, y, x)| {
        let (fy, fx) = ((y as f32 - 15.5) / 13.0, (x as f32 - 19.5) / 18.0);
        let inside = fy * fy + fx * fx < 1.0;
        let lung = |cx: f32| {
            let (ly, lx) = ((y as f32 - 14.0) / 8.0, (x as f32 - cx) / 6.0);
            ly * ly + lx * lx < 1.0 && (1..9).contains(&z)
        };
        if !inside {
            -1000.0
        } else if lung(10.0) || lung(29.0) {
            -850.0
        } else if (y, x) == (25, 20) || (y, x) == (26, 20) {
            700.0
        } else if (14..17).contains(&y) && (19..21).contains(&x) {
            40.0 + bright
        } else {
            40.0
        }
    });
    let mut g = Geometry::identity([2.5, 2.5, 5.0]);
    g.origin = [-50.0, -40.0, 100.0];
    Volume::new(data, g).unwrap()
}

fn raw_dataset(root: &Path, cases: &[&str]) {
    for sub in ["ncct", "ctpa"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for case in cases {
        write_nifti(&root.join(format!("ncct/{case}.nii.gz")), &chest(0.0)).unwrap();
        write_nifti(&root.join(format!("ctpa/{case}.nii.gz")), &chest(350.0)).unwrap();
    }
}

fn opts() -> PrepareOptions {
    let mut o = PrepareOptions {
        jobs: 2,
        ..PrepareOptions::default()
    };
    o.settings.align = AlignMode::None;
    o
}

fn statuses(report: &dataset::prepare::PrepareReport) -> Vec<&'static str> {
    report
        .cases
        .iter()
        .map(|c| match c.status {
            CaseStatus::Prepared(_) => "prepared",
            CaseStatus::Reused(_) => "reused",
            CaseStatus::Failed(_) => "failed",
        })
        .collect()
}

fn noop(_: &dataset::prepare::CaseReport) {}

#[test]
fn rerun_skips_window_change_keeps_stores_spacing_or_source_change_redoes() {
    let t = tempfile::tempdir().unwrap();
    let (raw, out) = (t.path().join("raw"), t.path().join("prep"));
    raw_dataset(&raw, &["a", "b", "c"]);
    let d = discover(&raw).unwrap();

    let first = prepare(&d, &out, &opts(), &noop).unwrap();
    assert_eq!(statuses(&first), ["prepared"; 3]);
    let ds = PreparedDataset::open(&out).unwrap();
    let before = ds.slice("b", 4).unwrap().ctpa.to_owned();
    // The stored CTPA is the source (same grid, no alignment), rounded to whole HU.
    assert_eq!(before[[15, 19]], 390);
    assert_eq!(before[[0, 0]], -1000);
    drop(ds);

    let second = prepare(&d, &out, &opts(), &noop).unwrap();
    assert_eq!(statuses(&second), ["reused"; 3]);
    assert_eq!(second.manifest.cases, first.manifest.cases);

    // The window is applied on read: changing it keeps the stores, updates the manifest.
    let mut o = opts();
    o.window = IntensityWindow::new(-1000.0, 1000.0).unwrap();
    let third = prepare(&d, &out, &o, &noop).unwrap();
    assert_eq!(statuses(&third), ["reused"; 3]);
    let ds = PreparedDataset::open(&out).unwrap();
    assert_eq!(ds.window(), o.window);
    let s = ds.slice("b", 4).unwrap();
    assert_eq!(s.ctpa_normalized()[[15, 19]], o.window.normalize(390.0));
    drop(ds);

    // Another spacing changes the stored bytes: every case is redone.
    o.settings.spacing = SpacingMode::Fixed([5.0, 5.0, 5.0]);
    let fourth = prepare(&d, &out, &o, &noop).unwrap();
    assert_eq!(statuses(&fourth), ["prepared"; 3]);
    let ds = PreparedDataset::open(&out).unwrap();
    assert_eq!(ds.manifest().cases[0].meta.grid.shape_zyx, [10, 16, 20]);
    drop(ds);

    // A changed source redoes only that case.
    write_nifti(&raw.join("ctpa/c.nii.gz"), &chest(500.0)).unwrap();
    let fifth = prepare(&d, &out, &o, &noop).unwrap();
    assert_eq!(statuses(&fifth), ["reused", "reused", "prepared"]);
}

#[test]
fn a_truncated_store_is_redone_not_trusted() {
    let t = tempfile::tempdir().unwrap();
    let (raw, out) = (t.path().join("raw"), t.path().join("prep"));
    raw_dataset(&raw, &["a", "b"]);
    let d = discover(&raw).unwrap();
    prepare(&d, &out, &opts(), &noop).unwrap();
    let f = out.join("cases/a/ncct.i16");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // A leftover temporary of an interrupted run is cleaned up.
    std::fs::create_dir_all(out.join("cases/.a.123.0.tmp")).unwrap();
    let again = prepare(&d, &out, &opts(), &noop).unwrap();
    assert_eq!(statuses(&again), ["prepared", "reused"]);
    assert!(!out.join("cases/.a.123.0.tmp").exists());
    PreparedDataset::open(&out).unwrap();
}

#[test]
fn seeded_split_is_deterministic_and_patient_level() {
    let t = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let raw = t.path().join("raw");
    raw_dataset(&raw, &refs);
    let d = discover(&raw).unwrap();
    let split_of = |seed: u64, out: &str| -> BTreeMap<String, Split> {
        let mut o = opts();
        o.split = SplitChoice::Seeded {
            seed,
            fractions: SplitFractions::new([0.6, 0.2, 0.2]).unwrap(),
        };
        let r = prepare(&d, &t.path().join(out), &o, &noop).unwrap();
        r.manifest
            .cases
            .iter()
            .map(|c| (c.meta.case.clone(), c.split))
            .collect()
    };
    let a = split_of(7, "p1");
    let b = split_of(7, "p2");
    assert_eq!(a, b, "same seed, same split");
    // Every case exactly once, counts by fraction.
    assert_eq!(a.len(), 10);
    let count = |s: Split| a.values().filter(|&&v| v == s).count();
    assert_eq!(
        [count(Split::Train), count(Split::Val), count(Split::Test)],
        [6, 2, 2]
    );
    let ds = PreparedDataset::open(&t.path().join("p1")).unwrap();
    let mut seen: Vec<&str> = Split::ALL
        .iter()
        .flat_map(|&s| ds.cases(s).into_iter().map(|c| c.name()))
        .collect();
    seen.sort();
    assert_eq!(seen, refs, "a case in exactly one split");
    // Another seed gives another assignment (with 10 cases, a collision is ~1 in 1260).
    assert_ne!(split_of(8, "p3"), a);
    // split.json written beside the manifest reproduces the split as a split file.
    let pinned = t.path().join("p1/split.json");
    let mut o = opts();
    o.split = SplitChoice::File(pinned);
    let r = prepare(&d, &t.path().join("p4"), &o, &noop).unwrap();
    let c: BTreeMap<String, Split> = r
        .manifest
        .cases
        .iter()
        .map(|c| (c.meta.case.clone(), c.split))
        .collect();
    assert_eq!(c, a);
}

#[test]
fn split_file_is_applied_and_checked_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    raw_dataset(&raw, &["a", "b", "c"]);
    let d = discover(&raw).unwrap();
    let file = t.path().join("split.json");
    std::fs::write(
        &file,
        r#"{"train": ["a", "c"], "test": ["b"], "val": ["zz"]}"#,
    )
    .unwrap();
    let mut o = opts();
    o.split = SplitChoice::File(file.clone());
    let r = prepare(&d, &t.path().join("ok"), &o, &noop).unwrap();
    let got: Vec<(&str, Split)> = r
        .manifest
        .cases
        .iter()
        .map(|c| (c.name(), c.split))
        .collect();
    assert_eq!(
        got,
        [("a", Split::Train), ("b", Split::Test), ("c", Split::Train)]
    );

    // A case missing from the file: error naming file and case, nothing prepared.
    std::fs::write(&file, r#"{"a": "train", "b": "val"}"#).unwrap();
    let out = t.path().join("missing");
    let e = prepare(&d, &out, &o, &noop).unwrap_err();
    assert!(
        matches!(e, PrepareError::Split(SplitError::Missing { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("split.json") && msg.contains('c'), "{msg}");
    assert!(!out.join("cases").exists());

    // A case in two splits is refused.
    std::fs::write(&file, r#"{"train": ["a", "b"], "val": ["b", "c"]}"#).unwrap();
    let e = prepare(&d, &out, &o, &noop).unwrap_err().to_string();
    assert!(e.contains("both"), "{e}");
}

#[test]
fn unreadable_cases_are_reported_and_zero_usable_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    raw_dataset(&raw, &["good", "bad"]);
    let bad = raw.join("ncct/bad.nii.gz");
    std::fs::write(&bad, b"this is not a NIfTI file").unwrap();
    let d = discover(&raw).unwrap();
    let go_on = PrepareOptions {
        allow_failed_cases: true,
        ..opts()
    };
    let r = prepare(&d, &t.path().join("out"), &go_on, &noop).unwrap();
    assert_eq!(statuses(&r), ["failed", "prepared"]);
    let CaseStatus::Failed(reason) = &r.cases[0].status else {
        unreachable!()
    };
    assert!(reason.contains(&bad.display().to_string()), "{reason}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("out").join(MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(m["skipped"][0]["case"], "bad");
    assert_eq!(m["cases"].as_array().unwrap().len(), 1);

    std::fs::write(raw.join("ctpa/good.nii.gz"), b"").unwrap();
    let e = prepare(&d, &t.path().join("out2"), &opts(), &noop).unwrap_err();
    assert!(matches!(e, PrepareError::NoUsableCases { .. }), "{e}");
    assert!(e.to_string().contains("no case could be prepared"), "{e}");
}

/// #13 item 5: a prepare in which a case fails fails as a whole, lists the case, and leaves
/// the earlier complete manifest in force; the cases it did prepare are reused by the rerun.
#[test]
fn a_prepare_with_failed_cases_fails_and_keeps_the_earlier_manifest() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let out = t.path().join("out");
    raw_dataset(&raw, &["a", "b"]);
    prepare(&discover(&raw).unwrap(), &out, &opts(), &noop).unwrap();
    let complete = std::fs::read(out.join(MANIFEST_FILE)).unwrap();

    // a third case arrives broken (as after a full disk)
    raw_dataset(&raw, &["c"]);
    let bad = raw.join("ctpa/c.nii.gz");
    std::fs::write(&bad, b"truncated").unwrap();
    let e = prepare(&discover(&raw).unwrap(), &out, &opts(), &noop).unwrap_err();
    let PrepareError::CasesFailed { failed, cases, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].case, "c");
    assert_eq!(cases.len(), 3);
    let msg = e.to_string();
    assert!(
        msg.contains("1 of 3 cases failed") && msg.contains("c.nii.gz"),
        "{msg}"
    );
    assert_eq!(std::fs::read(out.join(MANIFEST_FILE)).unwrap(), complete);
    assert!(dataset::store::PreparedDataset::open(&out).is_ok());
    assert!(out.join(dataset::prepare::PROGRESS_FILE).is_file());

    // fixed: the rerun succeeds, reusing a and b
    raw_dataset(&raw, &["c"]);
    let r = prepare(&discover(&raw).unwrap(), &out, &opts(), &noop).unwrap();
    assert_eq!(statuses(&r), ["reused", "reused", "prepared"]);
    assert!(!out.join(dataset::prepare::PROGRESS_FILE).exists());
    assert_eq!(r.manifest.cases.len(), 3);
}

#[test]
fn mismatched_pair_is_refused_naming_both_files() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    raw_dataset(&raw, &["ok", "far"]);
    let mut far = chest(0.0);
    far.geometry.origin[2] += 1000.0;
    write_nifti(&raw.join("ctpa/far.nii.gz"), &far).unwrap();
    let d = discover(&raw).unwrap();
    let go_on = PrepareOptions {
        allow_failed_cases: true,
        ..opts()
    };
    let r = prepare(&d, &t.path().join("out"), &go_on, &noop).unwrap();
    let CaseStatus::Failed(reason) = &r.cases[0].status else {
        panic!("{:?}", r.cases[0].status)
    };
    assert!(
        reason.contains("ncct/far.nii.gz")
            && reason.contains("ctpa/far.nii.gz")
            && reason.contains("overlap"),
        "{reason}"
    );
}

fn dice(a: &Array3<u8>, b: &Array3<u8>) -> f64 {
    let (mut both, mut sum) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b.iter()) {
        both += usize::from(x != 0 && y != 0);
        sum += usize::from(x != 0) + usize::from(y != 0);
    }
    2.0 * both as f64 / sum.max(1) as f64
}

#[test]
fn phantom_end_to_end_lung_dice_and_rigid_alignment() {
    use dataset::phantom::{write_dataset, PhantomConfig, WriteOptions};
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let cfg = PhantomConfig {
        misalignment_mm: 8.0,
        ..PhantomConfig::default()
    };
    write_dataset(
        &raw,
        &cfg,
        &WriteOptions {
            cases: 1,
            overwrite: false,
            preview: false,
        },
        &|_| {},
    )
    .unwrap();
    let d = discover(&raw).unwrap();
    assert_eq!(d.pairs.len(), 1);
    let mut o = opts();
    o.settings.align = AlignMode::Rigid;
    let out = t.path().join("prep");
    let r = prepare(&d, &out, &o, &noop).unwrap();
    let meta = r.cases[0].meta().expect("prepared");
    let a = meta.alignment.as_ref().expect("aligned");
    assert!(a.after > a.before, "similarity {} -> {}", a.before, a.after);

    let ds = PreparedDataset::open(&out).unwrap();
    let case = &meta.case;
    let v = ds.volume(case).unwrap();
    let truth = volume::io::read_mask(&raw.join(format!("truth/lung/{case}.nii.gz"))).unwrap();
    assert!(
        truth.same_grid(&v.lung, 1e-6),
        "phantom truth is on the NCCT grid"
    );
    let dl = dice(&v.lung.data, &truth.data);
    assert!(dl > 0.9, "lung Dice {dl}");
    // The aligned CTPA is closer to the phantom's unmoved CTPA than the raw one.
    let truth_ctpa =
        volume::io::read_volume(&raw.join(format!("truth/ctpa_aligned/{case}.nii.gz"))).unwrap();
    let raw_ctpa = volume::io::read_volume(&d.pairs[0].ctpa.path).unwrap();
    let mae = |x: &Volume| {
        (&x.data - &truth_ctpa.data)
            .mapv(f32::abs)
            .mean()
            .unwrap_or(f32::NAN)
    };
    let (after, before) = (mae(&v.ctpa), mae(&raw_ctpa));
    assert!(
        after < before,
        "MAE to the unmoved CTPA: {before} -> {after}"
    );
    let s = ds.slice(case, meta.slices() / 2).unwrap();
    assert!(s.lung.iter().any(|&m| m == 1) && s.body.iter().any(|&m| m == 1));
}

/// #13 item 6: rigid alignment reports its quality and a pair it cannot plausibly match (an
/// unrelated volume) is refused naming both files, while one absurd voxel (1e9 HU) in an
/// otherwise identical pair does not move the alignment (voxels are clipped to the CT range
/// first).
#[test]
fn implausible_alignments_are_refused_and_outlier_voxels_do_not_steer_it() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    raw_dataset(&raw, &["outlier", "unrelated"]);
    let mut outlier = chest(350.0);
    outlier.data[[5, 16, 20]] = 1e9;
    write_nifti(&raw.join("ctpa/outlier.nii.gz"), &outlier).unwrap();
    let mut noise = chest(0.0);
    let mut state = 12345u64;
    noise.data.mapv_inplace(|_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 2000) as f32 - 1000.0
    });
    write_nifti(&raw.join("ctpa/unrelated.nii.gz"), &noise).unwrap();
    let mut o = opts();
    o.settings.align = AlignMode::Rigid;
    o.allow_failed_cases = true;
    let r = prepare(&discover(&raw).unwrap(), &t.path().join("out"), &o, &noop).unwrap();
    assert_eq!(statuses(&r), ["prepared", "failed"]);
    let CaseStatus::Failed(reason) = &r.cases[1].status else {
        unreachable!()
    };
    assert!(
        reason.contains("ncct/unrelated.nii.gz")
            && reason.contains("ctpa/unrelated.nii.gz")
            && (reason.contains("NCC") || reason.contains("degrees")),
        "{reason}"
    );
    let CaseStatus::Prepared(meta) = &r.cases[0].status else {
        unreachable!()
    };
    let a = meta.alignment.as_ref().unwrap();
    assert!(
        a.translation_mm < 1.0 && a.rotation_deg < 1.0,
        "one 1e9 HU voxel moved the alignment: {a:?}"
    );
    assert!(a.after > 0.9, "{a:?}");
}
