//! The training loop on a tiny synthetic dataset: learning on a fixed batch, exact resume,
//! the non-finite stop, and the run folder's contents.

mod common;

use common::{dataset, fixed_batch, new_run, resume_run, serial, tiny};
use std::path::Path;
use train::config::TrainConfig;
use train::events::read_events;
use train::nets::Nets;
use train::step::train_step;
use train::trainer::train;

/// `(step, loss_g, loss_d, l1)` of every train event.
fn losses(run: &Path) -> Vec<(u64, f64, f64, f64)> {
    common::events(run, "train")
        .into_iter()
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["loss_g"].as_f64().unwrap(),
                e["loss_d"].as_f64().unwrap(),
                e["l1"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_generator_overfits_a_fixed_batch() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny(30);
    let mut nets = Nets::new(&cfg, tch::Device::Cpu);
    let mut opts = nets.optimizers(&cfg).unwrap();
    let mut l1 = Vec::new();
    for step in 1..=30 {
        let s = train_step(&mut nets, &mut opts, &batch, &cfg, step, 1.0, step == 1).unwrap();
        if step == 1 {
            assert!(s.grad_g > 0.0 && s.grad_r > 0.0 && s.grad_d > 0.0, "{s:?}");
        }
        l1.push(s.l1);
    }
    // Not just "it runs": the reconstruction error on the batch it trains on falls clearly.
    let (first, last) = (l1[0], l1[l1.len() - 1]);
    assert!(last < 0.75 * first, "L1 went {first} -> {last}: {l1:?}");
}

#[test]
fn resume_continues_exactly() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("killed"));
    train(&new_run(tiny(6), &data, &a)).unwrap();
    let mut first_half = tiny(6);
    first_half.hooks.stop_after_step = Some(3);
    let out = train(&new_run(first_half, &data, &b)).unwrap();
    assert_eq!(out.steps, 3);
    assert!(!b.join("checkpoints/final").exists());
    // Later train events of the "killed" process that the checkpoint does not cover would be
    // trimmed on resume; the config given here is ignored in favour of the run's own.
    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));

    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 6);
    // Bitwise: on the CPU with a fixed thread count every kernel is deterministic, batches and
    // libtorch's RNG are functions of (seed, step), and the checkpoint restores weights,
    // spectral-norm vectors and Adam moments exactly, so nothing can differ.
    assert_eq!(la, lb);
    let wa = std::fs::read(a.join("checkpoints/final/generator.safetensors")).unwrap();
    let wb = std::fs::read(b.join("checkpoints/final/generator.safetensors")).unwrap();
    assert!(wa == wb, "final generator weights differ after resume");
    let da = std::fs::read(a.join("checkpoints/final/discriminator.safetensors")).unwrap();
    let db = std::fs::read(b.join("checkpoints/final/discriminator.safetensors")).unwrap();
    assert!(
        da == db,
        "final discriminator (incl. spectral-norm u) differs after resume"
    );
}

/// A run started before `[inference]` existed validated on whole slices: resumed, it keeps
/// them (its `best` stays comparable) and its checkpoints say so, where a new run records the
/// default, tiles of the training crop.
#[test]
fn a_run_from_before_inference_keeps_whole_slices_when_resumed() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("old");
    let mut first = tiny(9);
    first.hooks.stop_after_step = Some(3);
    train(&new_run(first, &data, &run)).unwrap();
    let recorded = |ckpt: &str| -> serde_json::Value {
        let state = std::fs::read_to_string(run.join("checkpoints").join(ckpt).join("state.json"));
        serde_json::from_str::<serde_json::Value>(&state.unwrap()).unwrap()["config"]["inference"]
            .clone()
    };
    assert_eq!(recorded("latest")["tile"], "auto");
    assert_eq!(recorded("latest")["tta"], "auto");
    let config = run.join("config.toml");
    let edit = |f: &dyn Fn(&mut toml::Table)| {
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        f(&mut table);
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    };
    // the config as a build before test-time mirroring wrote it: [inference] without `tta`
    edit(&|t| {
        let inference = t["inference"].as_table_mut().unwrap();
        assert!(inference.remove("tta").is_some());
    });
    let hooks = train::config::TestHooks {
        stop_after_step: Some(6),
        ..Default::default()
    };
    let out = train(&resume_run(&data, &run, hooks)).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));
    assert_eq!(recorded("latest")["tile"], "auto");
    assert_eq!(recorded("latest")["tta"], "none");
    // the config as a build before tiled validation wrote it: no [inference]
    edit(&|t| assert!(t.remove("inference").is_some()));
    let out = train(&resume_run(&data, &run, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (6, 9));
    assert_eq!(recorded("final")["tile"], "whole");
    assert_eq!(recorded("final")["tta"], "none");
}

/// What validation runs (the training config's `[inference]`, resolved with training's
/// augmentation) is what `predict` resolves from the checkpoint it writes: tiles and test-time
/// mirrors, for augmentation that mirrors left-right (the default), nothing, or along both
/// axes.
#[test]
fn predict_resolves_the_inference_validation_ran() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    // (name, G's passes per slice or tile, the change to the tiny config)
    type Setting = (&'static str, usize, fn(&mut TrainConfig));
    let settings: [Setting; 3] = [
        ("default", 2, |_| {}),
        ("off", 1, |c| c.data.augment.enabled = false),
        ("both", 4, |c| {
            c.data.augment.flip_y_prob = 0.5;
            c.inference.tile = infer::tiles::TileSize::Px(16);
            c.inference.tile_step = 0.25;
        }),
    ];
    for (name, passes, set) in settings {
        let mut cfg = tiny(1);
        set(&mut cfg);
        let run = tmp.path().join(name);
        train(&new_run(cfg.clone(), &data, &run)).unwrap();
        let loaded = infer::checkpoint::load_generator(&run, tch::Device::Cpu).unwrap();
        let models = std::slice::from_ref(&loaded);
        let tiles = infer::tiles::resolve(None, None, models).unwrap();
        let tta = infer::tta::resolve(None, models).unwrap();
        assert_eq!(tiles, cfg.tiling().unwrap(), "{name}");
        assert_eq!(tta, cfg.tta().unwrap(), "{name}");
        assert_eq!(tta.map_or(1, |t| t.passes()), passes, "{name}");
    }
}

#[test]
fn run_folder_holds_everything_and_is_never_reused() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train(&new_run(tiny(3), &data, &run)).unwrap();
    for f in [
        "config.toml",
        "train.log",
        "metrics.jsonl",
        "curves.png",
        "samples/step_000003.png",
        "checkpoints/latest/state.json",
        "checkpoints/final/generator.safetensors",
        "checkpoints/final/registration.safetensors",
        "checkpoints/final/discriminator.safetensors",
        "checkpoints/final/optim_gr.safetensors",
        "checkpoints/final/optim_d.safetensors",
        "checkpoints/best/config.toml",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    // The resolved config rebuilds the run.
    let saved = TrainConfig::load(&run.join("config.toml"), "default").unwrap();
    assert_eq!(saved.schedule.steps, 3);
    assert!(saved.data.window.is_some());
    // Validation reports the model and the baseline in HU.
    let ev = read_events(&run.join("metrics.jsonl")).unwrap();
    let val: Vec<_> = ev.iter().filter(|e| e["event"] == "val").collect();
    assert_eq!(val.len(), 1);
    assert!(val[0]["mae_body"].as_f64().unwrap() > 0.0);
    assert!(val[0]["baseline_mae_lung"].as_f64().unwrap() > 0.0);
    assert!(out.baseline.mae_body.is_some());
    // predict's entry point rebuilds G from the run folder alone.
    let g = infer::checkpoint::load_generator(&run, tch::Device::Cpu).unwrap();
    assert_eq!(g.step, 3);
    // A second run into the same folder is refused, files untouched.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let err = train(&new_run(tiny(3), &data, &run)).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
}

#[test]
fn without_registration_no_r_is_trained_or_saved() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = tiny(2);
    cfg.registration = false;
    train(&new_run(cfg, &data, &run)).unwrap();
    assert!(run
        .join("checkpoints/final/generator.safetensors")
        .is_file());
    assert!(!run
        .join("checkpoints/final/registration.safetensors")
        .exists());
    let ev = read_events(&run.join("metrics.jsonl")).unwrap();
    let t: Vec<_> = ev.iter().filter(|e| e["event"] == "train").collect();
    assert!(t.iter().all(|e| e["smooth"] == 0.0 && e["flow_max"] == 0.0));
}

#[test]
fn a_non_finite_loss_stops_with_a_snapshot() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = tiny(5);
    cfg.hooks.inject_nan_at_step = Some(2);
    let err = train(&new_run(cfg, &data, &run)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("step 2") && msg.contains("total G+R"), "{msg}");
    let snap = run.join("debug/step_2");
    for f in [
        "batch.safetensors",
        "generator.safetensors",
        "discriminator.safetensors",
        "reason.json",
    ] {
        assert!(snap.join(f).is_file(), "missing {f}");
    }
    let ev = read_events(&run.join("metrics.jsonl")).unwrap();
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["step"], 2);
    // It did not train on: no train event at or after step 2.
    assert!(ev
        .iter()
        .all(|e| !(e["event"] == "train" && e["step"].as_u64().unwrap() >= 2)));
}

/// `deterministic = true` (#12): libtorch's deterministic mode is on for the run, and on the
/// CPU, whose kernels are deterministic already, the curve is the default run's, bit for bit.
#[test]
fn deterministic_mode_is_switched_on_and_changes_nothing_on_the_cpu() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("default"), tmp.path().join("deterministic"));
    train(&new_run(tiny(3), &data, &a)).unwrap();
    let mut cfg = tiny(3);
    cfg.deterministic = true;
    train(&new_run(cfg, &data, &b)).unwrap();
    assert!(torchext::deterministic());
    torchext::set_deterministic(false, false).unwrap();
    assert_eq!(losses(&a), losses(&b));
    let text = std::fs::read_to_string(b.join("config.toml")).unwrap();
    assert!(text.contains("deterministic = true"), "{text}");
}

/// 2.5D input (#16 item 1): G with 3 input channels trains on stacks of neighbouring slices,
/// validates and checkpoints like the one-slice G, and `predict`'s loader rebuilds it from the
/// checkpoint and translates a volume with the same stacks (the checkpoint's G is the trained
/// one: its first layer sees 3 channels and its output equals the validator's).
#[test]
fn a_two_and_a_half_d_generator_trains_and_predicts() {
    let _serial = serial();
    let data = dataset();
    let mut cfg = tiny(4);
    cfg.model.generator.in_channels = 3;
    let (_tmp, run) = trains_four_finite_steps(cfg);
    let g = infer::checkpoint::load_generator(&run.join("checkpoints/final"), tch::Device::Cpu)
        .unwrap();
    assert_eq!(g.generator.config().in_channels, 3);
    let ds = dataset::store::PreparedDataset::open(&data).unwrap();
    let v =
        train::validate::Validator::load(&ds, g.window, 16, 1, false, &Default::default()).unwrap();
    let case = &v.cases[0];
    let from_validation = v
        .translate(&g.generator, &case.ncct.data, tch::Device::Cpu)
        .unwrap();
    let opts = infer::predict::PredictOptions {
        batch_size: 8,
        ..infer::predict::PredictOptions::new()
    };
    let from_predict = g
        .translator()
        .translate_volume(&case.ncct, &opts, |_| {})
        .unwrap();
    assert_eq!(from_validation, from_predict.data);
    // even numbers of channels have no middle slice
    let mut even = tiny(4);
    even.model.generator.in_channels = 2;
    let e = format!("{:#}", even.validate().unwrap_err());
    assert!(e.contains("in_channels"), "{e}");
}

/// R across slices (#16) with a 2.5D G: the loader serves one more NCCT slice on each side
/// (5 for G's 3 channels), training, validation, the sample grid (which needs G's outputs
/// for the neighbouring slices too) and checkpoints work, and the checkpoint's G is the plain
/// 3-channel G that `predict` loads.
#[test]
fn registration_across_slices_trains_with_a_two_and_a_half_d_generator() {
    let _serial = serial();
    let mut cfg = tiny(4);
    cfg.model.generator.in_channels = 3;
    cfg.model.registration.through_plane = true;
    let batch = common::fixed_batch_for(&cfg);
    let (b, planes) = (batch.x.size()[0], batch.planes.as_ref().unwrap());
    assert_eq!(planes.size()[..2], [3 * b, 3]);
    assert!(planes.narrow(0, b, b).equal(batch.stack.as_ref().unwrap()));
    let (_tmp, run) = trains_four_finite_steps(cfg);
    let samples: Vec<_> = std::fs::read_dir(run.join("samples")).unwrap().collect();
    assert!(!samples.is_empty(), "the sample grid was drawn");
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(text.contains("through_plane = true"), "{text}");
    // R was built for three moving slices and the CTPA, and logged its dz
    let r = tch::Tensor::read_safetensors(run.join("checkpoints/final/registration.safetensors"))
        .unwrap();
    let first = r.iter().find(|(n, _)| n == "down.0.0.conv.weight").unwrap();
    assert_eq!(first.1.size()[1], 4, "R's first conv sees 4 channels");
    let dz: Vec<f64> = common::events(&run, "train")
        .iter()
        .map(|e| e["flow_z_mean"].as_f64().unwrap())
        .collect();
    assert!(dz.iter().all(|v| v.is_finite() && *v > 0.0), "{dz:?}");
    let g = infer::checkpoint::load_generator(&run.join("checkpoints/final"), tch::Device::Cpu)
        .unwrap();
    assert_eq!(g.generator.config().in_channels, 3);
}

/// A run-away R (a field reaching beyond the training image) is reported once in train.log,
/// naming the key that bounds it; with `max_displacement_px` the same R stays within the
/// bound and nothing is reported.
#[test]
fn a_run_away_registration_field_is_reported_and_the_bound_holds_it() {
    let _serial = serial();
    let mut cfg = tiny(4);
    cfg.model.registration.head_init_std = 100.0; // fields of hundreds of pixels at step 1
    let crop = cfg.data.crop_size as f64;
    let flow_max = |run: &std::path::Path| -> Vec<f64> {
        common::events(run, "train")
            .iter()
            .map(|e| e["flow_max"].as_f64().unwrap())
            .collect()
    };
    let warning = "model.registration.max_displacement_px";
    let (_tmp, run) = trains_four_finite_steps(cfg.clone());
    let max = flow_max(&run);
    assert!(
        max.iter().any(|&m| m > crop),
        "the test needs a run-away field: {max:?}"
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert_eq!(log.matches("it has run away").count(), 1, "{log}");
    assert!(log.contains(warning), "{log}");
    cfg.model.registration.max_displacement_px = 5.0;
    let (_tmp, run) = trains_four_finite_steps(cfg);
    let max = flow_max(&run);
    assert!(
        max.iter().all(|&m| m <= 5.0 * 2f64.sqrt() + 1e-4),
        "{max:?}"
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(!log.contains("run away"), "{log}");
}

/// Trains `cfg` (4 steps) on the test dataset into a fresh folder; asserts that every step
/// logged finite G and L1 losses. Returns the folder (kept alive) and the run.
fn trains_four_finite_steps(cfg: TrainConfig) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train(&new_run(cfg, &dataset(), &run)).unwrap();
    assert_eq!(out.steps, 4);
    let l = losses(&run);
    assert_eq!(l.len(), 4);
    assert!(
        l.iter().all(|l| l.1.is_finite() && l.3.is_finite()),
        "{l:?}"
    );
    (tmp, run)
}
