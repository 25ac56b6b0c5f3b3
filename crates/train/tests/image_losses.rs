//! The image loss terms in the trainer: perceptual loss (a small random VGG16 from
//! `tools/golden/vgg_random.py`), multi-resolution reconstruction and the lung-weight
//! curriculum, all on at once: exact resume, what is logged and recorded, what is refused at
//! start-up; and the ablation fragments.

mod common;

use common::{dataset, events, new_run, resume_run, serial};
use std::path::{Path, PathBuf};

use train::config::TrainConfig;
use train::curriculum::Ramp;
use train::trainer::train;

fn vgg16_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/data/vgg16_random.safetensors")
}

/// The tiny preset on 32 px crops with all three features on.
fn all_on(steps: u64, vgg: &Path) -> TrainConfig {
    let mut c = common::tiny(steps);
    // The optimizers' defaults (the shared tiny config raises the learning rate).
    c.optim = TrainConfig::default().optim;
    c.log.every = 2;
    c.log.sample_every = 0;
    c.loss.scale_weights = vec![1.0, 0.5];
    c.loss.perceptual.relative_weight = 0.5;
    c.loss.perceptual.weights_file = Some(vgg.to_path_buf());
    c.lung_curriculum.ramp = Ramp::Linear;
    c.lung_curriculum.steps = 4;
    c
}

/// `(step, loss_g, l1, perceptual, lung_weight)` of every train event.
fn train_terms(run: &Path) -> Vec<(u64, f64, f64, f64, f64)> {
    events(run, "train")
        .iter()
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["loss_g"].as_f64().unwrap(),
                e["l1"].as_f64().unwrap(),
                e["perceptual"].as_f64().unwrap(),
                e["lung_weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn all_three_on_resume_exactly_and_are_logged_and_recorded() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let vgg = tmp.path().join("vgg16.safetensors");
    std::fs::copy(vgg16_file(), &vgg).unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("killed"));
    train(&new_run(all_on(8, &vgg), &data, &a)).unwrap();
    let mut first = all_on(8, &vgg);
    first.hooks.stop_after_step = Some(3);
    train(&new_run(first, &data, &b)).unwrap();
    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 8));

    let (ta, tb) = (train_terms(&a), train_terms(&b));
    assert_eq!(ta.len(), 4, "log.every = 2 over 8 steps");
    assert_eq!(ta, tb, "bitwise equal after resume with all three on");
    // Perceptual on; the curriculum's weights: step s uses 1 + 9 * min((s - 1) / 4, 1).
    for &(step, _, _, perceptual, lw) in &ta {
        assert!(perceptual > 0.0 && perceptual.is_finite(), "step {step}");
        let p = ((step - 1) as f64 / 4.0).min(1.0);
        assert!((lw - (1.0 + 9.0 * p)).abs() < 1e-12, "step {step}: {lw}");
    }
    // lung_weight events: log steps 2 and 4 (changing), the end of the ramp at 5; none at 6, 8.
    let lw_steps: Vec<u64> = events(&a, "lung_weight")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(lw_steps, [2, 4, 5]);
    let log = std::fs::read_to_string(a.join("train.log")).unwrap();
    assert!(
        log.contains("step 5: lung weight 10.00 (curriculum done)"),
        "{log}"
    );
    assert!(
        log.contains("perceptual loss: vgg16 from") && log.contains("sha256 "),
        "{log}"
    );
    assert!(log.contains("multi-resolution reconstruction: scale weights [1.0, 0.5]"));

    // The run's config records the file (absolute) and its checksum; checkpoints hold no VGG.
    let saved = TrainConfig::load(&a.join("config.toml"), "default").unwrap();
    let p = &saved.loss.perceptual;
    assert_eq!(
        p.weights_file.as_deref(),
        Some(std::fs::canonicalize(&vgg).unwrap().as_path())
    );
    let sha = p.weights_sha256.clone().unwrap();
    assert_eq!(sha.len(), 64);
    assert!(log.contains(&sha));
    for file in std::fs::read_dir(a.join("checkpoints/final")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (name, _) in tch::Tensor::read_safetensors(&path).unwrap() {
                assert!(!name.contains("features."), "{}: {name}", path.display());
            }
        }
    }

    // A changed file stops a resume before any step.
    let bytes = std::fs::read(&vgg).unwrap();
    let mut tensors = tch::Tensor::read_safetensors(&vgg).unwrap();
    tensors[0].1 = &tensors[0].1 * 2.0;
    tch::Tensor::write_safetensors(&tensors, &vgg).unwrap();
    assert_ne!(std::fs::read(&vgg).unwrap(), bytes);
    let err = format!(
        "{:#}",
        train(&resume_run(&data, &b, Default::default())).unwrap_err()
    );
    assert!(err.contains("SHA-256") && err.contains(&sha), "{err}");
}

#[test]
fn a_bad_vgg_file_is_refused_before_the_run_folder_exists() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let missing = tmp.path().join("no_such_vgg.safetensors");
    let err = format!(
        "{:#}",
        train(&new_run(all_on(4, &missing), &data, &run)).unwrap_err()
    );
    assert!(
        err.contains("no_such_vgg.safetensors") && err.contains("[loss.perceptual]"),
        "{err}"
    );
    assert!(!run.exists());
    // A VGG16 file given as VGG19: the key at fault is named.
    let mut c = all_on(4, &vgg16_file());
    c.loss.perceptual.variant = model::perceptual::VggVariant::Vgg19;
    let err = format!("{:#}", train(&new_run(c, &data, &run)).unwrap_err());
    assert!(
        err.contains("vgg16_random.safetensors") && err.contains("features.17."),
        "{err}"
    );
    assert!(!run.exists());
}

#[test]
fn crops_too_small_for_the_coarsest_level_are_a_config_error() {
    let mut c = all_on(4, &vgg16_file());
    c.loss.scale_weights = vec![1.0, 0.5, 0.25];
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(
        err.contains("data.crop_size = 32") && err.contains("8x8") && err.contains("44x44"),
        "{err}"
    );
    c.loss.scale_weights = vec![1.0, 0.5, 0.0];
    assert!(c.validate().is_ok());
    c.data.crop_size = 48;
    c.loss.scale_weights = vec![1.0, 0.5, 0.25];
    assert!(c.validate().is_ok());
}

#[test]
fn curriculum_config_errors_name_the_section() {
    let mut c = TrainConfig::with_preset("tiny").unwrap();
    c.lung_curriculum.ramp = Ramp::Cosine;
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(err.contains("lung_curriculum"), "{err}");
    c.lung_curriculum.epochs = Some(0.5);
    assert!(c.validate().is_ok());
    // 0.5 epochs of 10 slices in batches of 4: ceil(1.25) steps.
    c.data.crop_size = 64;
    c.resolve(dataset::manifest::IntensityWindow::default(), 10, 1)
        .unwrap();
    assert_eq!(
        (c.lung_curriculum.steps, c.lung_curriculum.epochs),
        (2, None)
    );
}

#[test]
fn the_ablation_fragments_merge_over_the_demo_config() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo = root.join("configs/demo.toml");
    let load = |arm: &str| {
        TrainConfig::load_layered(
            &[demo.clone(), root.join("configs/ablation").join(arm)],
            "tiny",
        )
        .unwrap()
    };
    let base = TrainConfig::load(&demo, "tiny").unwrap();

    let m = load("multires.toml");
    assert_eq!(m.loss.scale_weights, [1.0, 0.5, 0.25]);
    assert!(
        m.validate().is_ok(),
        "the demo crop must hold 1/4-resolution SSIM"
    );
    assert_eq!(
        TrainConfig {
            loss: base.loss.clone(),
            ..m.clone()
        },
        base
    );

    let l = load("lung_curriculum.toml");
    assert_eq!(
        (l.lung_curriculum.ramp, l.lung_curriculum.steps),
        (Ramp::Linear, 600)
    );
    assert_eq!(l.lung_curriculum.steps * 10, base.schedule.steps * 4);
    assert!(l.validate().is_ok());

    let p = load("perceptual.toml");
    assert!(p.loss.perceptual.enabled());
    assert_eq!(
        p.loss.perceptual.weights_file.as_deref(),
        Some(Path::new("data/vgg16_random_init.safetensors"))
    );
    assert!(p.validate().is_ok());
}
