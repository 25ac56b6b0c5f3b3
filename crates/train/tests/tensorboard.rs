//! TensorBoard event files (#15 item 1).
//!
//! 1. The writer's bytes for a fixed sequence of events (fixed clock) equal the committed
//!    files in tests/data/tensorboard/, which TensorBoard's own `EventAccumulator` read once
//!    (`tools/golden/tensorboard_read.py`, PyPI tensorboard) into `golden.json`: tags, steps
//!    and values after its restart semantics. Our reader's view of those files must equal it.
//!    `NCCT2CTPA_BLESS=1` rewrites the committed files (then rerun the script).
//! 2. A real training run writes the expected tags, and a resumed run continues the curves
//!    without duplicates.

use std::path::{Path, PathBuf};
use train::tensorboard::{EventWriter, RunView};

mod common;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tensorboard")
}

fn first_clock() -> f64 {
    1_700_000_000.25
}

fn second_clock() -> f64 {
    1_700_000_100.5
}

/// A 3x2 RGB PNG.
fn tiny_png() -> Vec<u8> {
    let mut c = util::canvas::Canvas::new(3, 2, [10, 200, 30]);
    c.set(1, 1, [255, 255, 255]);
    let mut out = Vec::new();
    c.encode_png(&mut out).unwrap();
    out
}

/// The fixed events: a first process logs steps 1-3 (config text, two train scalars, a
/// validation scalar and an image at 3); a resumed process restarts at step 3 and logs 3-4.
fn write_fixture(dir: &Path) {
    let mut a = EventWriter::create_with_clock(dir, None, first_clock).unwrap();
    a.text(0, "config", "```toml\nseed = 42\n```").unwrap();
    for step in 1..=3u64 {
        let s = step as f64;
        let values = [
            ("train/l1".to_owned(), 1.0 / s),
            ("train/loss_g".to_owned(), 2.0 / s),
        ];
        a.scalars(step, &values).unwrap();
    }
    a.scalars(
        3,
        &[
            ("val/mae_body".into(), 100.5),
            ("val_ncct/mae_body".into(), 50.25),
        ],
    )
    .unwrap();
    a.png(3, "samples", tiny_png()).unwrap();
    let mut b = EventWriter::create_with_clock(dir, Some(3), second_clock).unwrap();
    for (step, l1) in [(3u64, 0.3), (4, 0.25)] {
        b.scalars(step, &[("train/l1".into(), l1)]).unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.")
        })
        .collect();
    f.sort();
    f
}

#[test]
fn the_writer_makes_the_bytes_tensorboard_read() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixture(tmp.path());
    let fresh = files(tmp.path());
    assert_eq!(fresh.len(), 2);
    if std::env::var_os("NCCT2CTPA_BLESS").is_some() {
        for old in files(&data()) {
            std::fs::remove_file(old).unwrap();
        }
        for (i, f) in fresh.iter().enumerate() {
            let name = format!(
                "events.out.tfevents.{}.fixture.{i}",
                1_700_000_000 + 100 * i
            );
            std::fs::copy(f, data().join(name)).unwrap();
        }
    }
    let committed = files(&data());
    assert_eq!(committed.len(), 2, "run with NCCT2CTPA_BLESS=1 once");
    for (a, b) in fresh.iter().zip(&committed) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
}

#[test]
fn our_reader_sees_what_tensorboard_saw() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data().join("golden.json")).unwrap()).unwrap();
    let view = RunView::of_dir(&data()).unwrap();
    let scalars = golden["scalars"].as_object().unwrap();
    assert_eq!(view.scalars.len(), scalars.len());
    for (tag, points) in scalars {
        let ours = &view.scalars[tag];
        let theirs: Vec<(i64, f32)> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(ours, &theirs, "{tag}");
    }
    // the restart: step 3 of train/l1 is the resumed process's 0.3, once
    assert_eq!(
        view.scalars["train/l1"],
        [(1, 1.0), (2, 0.5), (3, 0.3), (4, 0.25)]
    );
    let images = golden["images"].as_object().unwrap();
    for (tag, points) in images {
        let theirs: Vec<(i64, i32, i32)> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let v = |i: usize| p[i].as_i64().unwrap();
                (v(0), v(1) as i32, v(2) as i32)
            })
            .collect();
        assert_eq!(view.images[tag], theirs, "{tag}");
    }
    let texts = golden["texts"].as_object().unwrap();
    for (tag, points) in texts {
        let p = &points.as_array().unwrap()[0];
        assert_eq!(view.texts[tag][0].0, p[0].as_i64().unwrap());
        assert_eq!(view.texts[tag][0].1, p[1].as_str().unwrap());
    }
}

/// A run logs every train field, validation beside the baseline, the sample grid and the
/// config; a resume continues the curves without duplicates.
#[test]
fn a_training_run_and_its_resume_continue_one_set_of_curves() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = common::dataset();
    let run = tmp.path().join("run");
    let mut cfg = common::tiny(6);
    cfg.log.checkpoint_every = 2;
    cfg.hooks.stop_after_step = Some(5);
    train::train(&common::new_run(cfg, &data, &run)).unwrap();
    let view = RunView::of_dir(&run).unwrap();
    for tag in [
        "train/loss_g",
        "train/l1",
        "train/ssim",
        "train/adv_g",
        "train/smooth",
        "train/loss_d",
        "train/flow_mean",
        "train/grad_g",
        "train/lr",
        "train/lung_weight",
        "val/mae_body",
        "val_ncct/mae_body",
    ] {
        assert!(
            view.scalars.contains_key(tag),
            "{tag} missing: {:?}",
            view.scalars.keys()
        );
    }
    assert_eq!(
        view.scalars["train/l1"].len(),
        5,
        "steps 1-5 before the stop"
    );
    assert!(view.images.contains_key("samples"));
    assert!(view.texts["config"][0].1.contains("[model.generator]"));
    // killed after step 5 with the checkpoint of step 4: the resume restarts at 5
    train::train(&common::resume_run(&data, &run, Default::default())).unwrap();
    let view = RunView::of_dir(&run).unwrap();
    let steps: Vec<i64> = view.scalars["train/l1"].iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    let metrics = train::events::read_events(&run.join("metrics.jsonl")).unwrap();
    let l1_at_5 = metrics
        .iter()
        .find(|e| e["event"] == "train" && e["step"] == 5)
        .unwrap()["l1"]
        .as_f64()
        .unwrap();
    assert_eq!(
        view.scalars["train/l1"][4].1, l1_at_5 as f32,
        "the resumed step 5"
    );
}

/// `log.tensorboard = false` writes no event file (metrics.jsonl as always).
#[test]
fn tensorboard_off_writes_no_event_file() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = common::tiny(2);
    cfg.log.tensorboard = false;
    train::train(&common::new_run(cfg, &common::dataset(), &run)).unwrap();
    assert!(run.join("metrics.jsonl").is_file());
    assert!(files(&run).is_empty(), "{:?}", files(&run));
}
