//! The training config: defaults, presets, TOML round trip, unknown keys, overrides, checks.

use train::config::{Layer, TrainConfig};
use train::contrast::QuantileOutside;

#[test]
fn defaults_round_trip_through_toml() {
    for preset in ["default", "tiny", "reggan"] {
        let cfg = TrainConfig::with_preset(preset).unwrap();
        let text = cfg.to_toml_string().unwrap();
        let back = TrainConfig::from_toml_str(&text, "default").unwrap();
        assert_eq!(back, cfg, "{preset}:\n{text}");
    }
}

#[test]
fn documented_defaults() {
    let c = TrainConfig::default();
    assert_eq!(c.preset, "default");
    assert!(c.registration);
    assert_eq!(c.seed, 42);
    assert_eq!(c.device, "auto");
    assert_eq!(c.optim.generator.lr, 1e-4);
    assert_eq!(
        (c.optim.generator.beta1, c.optim.generator.beta2),
        (0.5, 0.999)
    );
    assert_eq!(c.schedule.steps, 100_000);
    assert_eq!(c.schedule.decay_start, 0.5);
    assert_eq!(c.data.batch_size, 4);
    assert_eq!(c.data.crop_size, 256);
    assert_eq!(c.loss.lung_weight, 10.0);
    assert!(c.validate().is_ok());
}

#[test]
fn a_file_names_only_what_it_changes_and_starts_from_its_preset() {
    let text = "preset = \"tiny\"\n[model.generator]\nbase_channels = 12\n[data]\ncrop_size = 64\n";
    let cfg = TrainConfig::from_toml_str(text, "default").unwrap();
    let tiny = model::config::ModelConfig::preset("tiny").unwrap();
    assert_eq!(cfg.model.generator.base_channels, 12);
    // The other generator keys are the tiny preset's, not the default's.
    assert_eq!(cfg.model.generator.depth, tiny.generator.depth);
    assert_eq!(cfg.model.registration, tiny.registration);
    assert_eq!(cfg.data.crop_size, 64);
    assert_eq!(cfg.data.batch_size, 4);
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    for text in [
        "sed = 1\n",
        "[data]\nbatch = 2\n",
        "[model.generator]\nbase_chanels = 8\n",
        "[optim.generator]\nlearning_rate = 0.1\n",
        "[data.augment]\nrotate = 3\n",
    ] {
        let err = TrainConfig::from_toml_str(text, "tiny").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown field"), "{text:?}: {msg}");
    }
    let err = TrainConfig::from_toml_str("preset = \"huge\"\n", "tiny").unwrap_err();
    assert!(format!("{err:#}").contains("huge"));
}

#[test]
fn flags_override_the_file() {
    let file: toml::Table = toml::from_str("preset = \"tiny\"\n[schedule]\nsteps = 10\n").unwrap();
    let mut flags = Layer::default();
    flags
        .set("schedule.steps", 99)
        .set("optim.generator.lr", 3e-4)
        .set("optim.discriminator.lr", 3e-4)
        .set("registration", false)
        .set("preset", "reggan");
    let cfg = TrainConfig::from_layers(vec![file, flags.0], "default").unwrap();
    assert_eq!(cfg.schedule.steps, 99);
    assert_eq!(cfg.optim.generator.lr, 3e-4);
    assert_eq!(cfg.optim.discriminator.lr, 3e-4);
    assert!(!cfg.registration);
    assert_eq!(cfg.preset, "reggan");
    assert_eq!(
        cfg.model,
        model::config::ModelConfig::preset("reggan").unwrap()
    );
}

#[test]
fn crop_must_be_a_multiple_of_the_networks_and_epochs_resolve_to_steps() {
    let mut cfg = TrainConfig::with_preset("tiny").unwrap();
    cfg.data.crop_size = 36; // tiny G has depth 3: multiple of 8
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("crop_size") && err.contains('8'), "{err}");
    cfg.data.crop_size = 32;
    cfg.schedule.epochs = Some(2.5);
    cfg.data.batch_size = 4;
    cfg.resolve(dataset::manifest::IntensityWindow::default(), 10, 1)
        .unwrap();
    // 2.5 epochs of 10 slices in batches of 4: ceil(6.25) steps.
    assert_eq!(cfg.schedule.steps, 7);
    assert_eq!(cfg.schedule.epochs, None);
    // data parallel: 2 ranks read 8 slices a step, so 2.5 epochs are ceil(3.125) steps
    let mut dp = TrainConfig::with_preset("tiny").unwrap();
    dp.data.crop_size = 32;
    dp.data.batch_size = 4;
    dp.schedule.epochs = Some(2.5);
    dp.resolve(dataset::manifest::IntensityWindow::default(), 10, 2)
        .unwrap();
    assert_eq!(dp.schedule.steps, 4);
    assert_eq!(
        cfg.data.window,
        Some(dataset::manifest::IntensityWindow::default())
    );
}

#[test]
fn the_demo_and_default_config_files_parse() {
    let demo = train::demo::train_config().unwrap();
    assert_eq!(demo.preset, "tiny");
    assert!(demo.validate().is_ok());
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/default.toml"
    ))
    .unwrap();
    let file = TrainConfig::from_toml_str(&text, "default").unwrap();
    assert_eq!(
        file,
        TrainConfig::default(),
        "configs/default.toml must state the defaults"
    );
}

#[test]
fn layered_files_merge_in_order_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    let arm = dir.path().join("arm.toml");
    std::fs::write(
        &base,
        "preset = \"tiny\"\nseed = 7\n[schedule]\nsteps = 1500\n[data]\ncrop_size = 64\n",
    )
    .unwrap();
    std::fs::write(&arm, "seed = 9\n[data]\nbatch_size = 2\n").unwrap();
    let cfg = TrainConfig::load_layered(&[&base, &arm], "default").unwrap();
    assert_eq!(cfg.preset, "tiny");
    assert_eq!(cfg.seed, 9, "the later file wins");
    assert_eq!(
        cfg.schedule.steps, 1500,
        "keys only the first file names survive"
    );
    assert_eq!((cfg.data.crop_size, cfg.data.batch_size), (64, 2));
    assert_eq!(
        cfg.model,
        model::config::ModelConfig::preset("tiny").unwrap()
    );

    // a bad arm is refused naming the file and what is wrong with it
    for (text, what) in [
        ("[data]\nbatch_sise = 2\n", "batch_sise"),
        (
            "[model.registration]\nthrough_plane = \"yes\"\n",
            "through_plane",
        ),
        ("seed = \n", "invalid TOML"),
    ] {
        std::fs::write(&arm, text).unwrap();
        let err = format!(
            "{:#}",
            TrainConfig::load_layered(&[&base, &arm], "default").unwrap_err()
        );
        assert!(err.contains("arm.toml") && err.contains(what), "{err}");
    }
}

/// #13 item 2: settings that libtorch would abort or panic on, or that ask for terabytes, are
/// refused by validation (before any run folder exists), naming the key and the limit.
#[test]
fn impossible_sizes_are_refused_naming_the_key() {
    let base = || {
        let mut c = TrainConfig::with_preset("tiny").unwrap();
        c.data.crop_size = 64;
        c
    };
    type Change = fn(&mut TrainConfig);
    let cases: [(&str, Change); 8] = [
        ("model.generator.base_channels", |c| {
            c.model.generator.base_channels = 0
        }),
        ("model.discriminator.n_layers", |c| {
            c.model.discriminator.n_layers = 8
        }),
        ("model.registration.depth", |c| {
            c.model.registration.depth = 64
        }),
        ("data.batch_size", |c| c.data.batch_size = 1 << 40),
        ("data.crop_size", |c| c.data.crop_size = 1 << 20),
        ("model.discriminator.max_channels", |c| {
            c.model.discriminator.max_channels = -5
        }),
        ("optim.registration_lr_factor", |c| {
            c.optim.registration_lr_factor = 0.0
        }),
        ("optim.registration_lr_factor", |c| {
            c.optim.registration_lr_factor = f64::NAN
        }),
    ];
    for (key, change) in cases {
        let mut c = base();
        change(&mut c);
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(base().validate().is_ok());
}

/// `[ema]`, `[identity]` and `[contrast]` refuse values that cannot work, naming the key.
#[test]
fn ema_and_identity_settings_are_checked() {
    let bad = |edit: &dyn Fn(&mut TrainConfig), key: &str| {
        let mut cfg = TrainConfig::with_preset("tiny").unwrap();
        cfg.data.crop_size = 32;
        edit(&mut cfg);
        let e = format!("{:#}", cfg.validate().unwrap_err());
        assert!(e.contains(key), "{key}: {e}");
    };
    bad(&|c| c.ema.decay = 1.0, "ema.decay");
    bad(&|c| c.ema.decay = -0.5, "ema.decay");
    bad(&|c| c.ema.decay = f64::NAN, "ema.decay");
    bad(&|c| c.identity.weight = -1.0, "identity.weight");
    bad(
        &|c| c.identity.spare_lung_above_hu = Some(f64::NAN),
        "identity.spare_lung_above_hu",
    );
    bad(&|c| c.identity.spare_px = 17, "identity.spare_px");
    bad(&|c| c.contrast.threshold_hu = 0.0, "contrast.threshold_hu");
    bad(&|c| c.contrast.motion_px = 1000, "contrast.motion_px");
    bad(&|c| c.contrast.weight = 0.5, "contrast.weight");
    bad(&|c| c.contrast.weight = f64::INFINITY, "contrast.weight");
    bad(&|c| c.contrast.mean_weight = -1.0, "contrast.mean_weight");
    bad(&|c| c.contrast.peak_weight = -1.0, "contrast.peak_weight");
    bad(&|c| c.contrast.peak_px = 0, "contrast.peak_px");
    bad(&|c| c.contrast.peak_px = 17, "contrast.peak_px");
    bad(&|c| c.contrast.quantile = 1.0, "contrast.quantile");
    bad(&|c| c.contrast.quantile = 0.0, "contrast.quantile");
    bad(&|c| c.contrast.quantile = f64::NAN, "contrast.quantile");
    bad(&|c| c.identity.ramp_steps = 750, "identity.ramp_steps");
    bad(&|c| c.identity.drift_weight = -1.0, "identity.drift_weight");
    bad(&|c| c.identity.drift_px = 0, "identity.drift_px");
    bad(&|c| c.identity.drift_px = 33, "identity.drift_px");
    bad(
        &|c| c.contrast.quantile_decay_steps = 750,
        "contrast.quantile_decay_steps",
    );
    bad(
        &|c| c.contrast.quantile_outside_lungs = QuantileOutside::Core,
        "contrast.quantile_outside_lungs",
    );
    bad(
        &|c| c.model.registration.max_displacement_px = -1.0,
        "model.registration.max_displacement_px",
    );
    bad(
        &|c| c.model.registration.max_displacement_px = f64::NAN,
        "model.registration.max_displacement_px",
    );
    let mut ok = TrainConfig::with_preset("tiny").unwrap();
    ok.data.crop_size = 32;
    ok.ema.decay = 0.999;
    ok.identity.weight = 10.0;
    ok.identity.spare_lung_above_hu = Some(-500.0);
    ok.identity.spare_px = 16;
    ok.identity.ramp_steps = 750;
    ok.identity.drift_weight = 10.0;
    ok.identity.drift_px = 32;
    ok.contrast.weight = 10.0;
    ok.contrast.peak_weight = 10.0;
    ok.contrast.peak_px = 16;
    ok.contrast.quantile = 0.75;
    ok.contrast.quantile_outside_lungs = QuantileOutside::None;
    ok.contrast.quantile_decay_steps = 750;
    ok.model.registration.max_displacement_px = 8.0;
    ok.validate().unwrap();
}

/// A run started before the contrast region moved from `[identity]` to `[contrast]` recorded
/// `contrast_threshold_hu` and `dilation_px` under `[identity]`: its config still loads (the
/// keys are ignored), and a resolved config no longer writes them.
#[test]
fn configs_with_the_old_identity_keys_still_load() {
    let old = "[identity]\nweight = 10.0\ncontrast_threshold_hu = 100.0\ndilation_px = 3\n";
    let table: toml::Table = toml::from_str(old).unwrap();
    let cfg = TrainConfig::from_layers(vec![table], "tiny").unwrap();
    assert_eq!(cfg.identity.weight, 10.0);
    let written = toml::to_string(&cfg).unwrap();
    assert!(!written.contains("dilation_px"), "{written}");
    // other unknown keys are still refused
    let bad: toml::Table = toml::from_str("[identity]\nweigth = 1.0\n").unwrap();
    assert!(TrainConfig::from_layers(vec![bad], "tiny").is_err());
}

/// A run resolved before `[contrast] quantile_outside_lungs` (2026-12-06) recorded
/// `quantile_lungs_only` in its config.toml and its checkpoints' state.json: both still
/// load, `true` reads as `"none"` and `false` as the default, the old key is written back
/// as it was read (so the run's files round-trip), and naming both keys is refused.
#[test]
fn configs_with_quantile_lungs_only_still_load() {
    let load = |text: &str| {
        let table: toml::Table = toml::from_str(text).unwrap();
        TrainConfig::from_layers(vec![table], "tiny").unwrap()
    };
    let old = load("[contrast]\nquantile = 0.75\nquantile_lungs_only = true\n");
    old.validate().unwrap();
    assert_eq!(old.contrast.quantile_outside(), QuantileOutside::None);
    let again = TrainConfig::from_toml_str(&old.to_toml_string().unwrap(), "tiny").unwrap();
    assert_eq!(again.contrast.quantile_outside(), QuantileOutside::None);
    let json: TrainConfig = serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
    assert_eq!(json.contrast.quantile_outside(), QuantileOutside::None);
    let off = load("[contrast]\nquantile_lungs_only = false\n");
    assert_eq!(off.contrast.quantile_outside(), QuantileOutside::Region);
    // a new config does not write the old key
    let new = load("[contrast]\nquantile = 0.75\nquantile_outside_lungs = \"core\"\n");
    assert_eq!(new.contrast.quantile_outside(), QuantileOutside::Core);
    let written = new.to_toml_string().unwrap();
    assert!(!written.contains("quantile_lungs_only"), "{written}");
    let both = load("[contrast]\nquantile = 0.75\nquantile_lungs_only = true\nquantile_outside_lungs = \"core\"\n");
    let e = format!("{:#}", both.validate().unwrap_err());
    assert!(e.contains("quantile_lungs_only"), "{e}");
}

/// A `_reg` best metric needs the registered validation that computes it: refused, naming
/// both keys, when `log.registered_validation` is off; the plain metrics work without it.
#[test]
fn a_registered_best_metric_needs_registered_validation() {
    let mut cfg = TrainConfig::with_preset("tiny").unwrap();
    cfg.data.crop_size = 32;
    cfg.log.registered_validation = false;
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(
        e.contains("mae_body_reg") && e.contains("registered_validation"),
        "{e}"
    );
    cfg.log.best_metric = train::config::BestMetric::MaeBody;
    cfg.validate().unwrap();
    // the contrast region's MAE scores against the CTPA as it lies: no registration needed
    let t: toml::Table = toml::from_str("[log]\nbest_metric = \"mae_contrast\"\n").unwrap();
    let mut cfg = TrainConfig::from_layers(vec![t], "tiny").unwrap();
    assert_eq!(cfg.log.best_metric, train::config::BestMetric::MaeContrast);
    assert!(cfg.log.best_metric.improves(90.0, 120.0));
    cfg.data.crop_size = 32;
    cfg.log.registered_validation = false;
    cfg.validate().unwrap();
}

/// `[inference] tta` takes none, auto, flip or full; anything else is refused naming the value
/// and the choices, and `auto` follows the augmentation's mirrors.
#[test]
fn inference_tta_is_checked_and_auto_follows_the_augmentation() {
    let err = TrainConfig::from_toml_str("[inference]\ntta = \"mirror\"\n", "tiny").unwrap_err();
    let e = format!("{err:#}");
    assert!(e.contains("mirror") && e.contains("`flip`"), "{e}");
    let cfg = TrainConfig::from_toml_str("[data.augment]\nflip_x_prob = 0.0\n", "tiny").unwrap();
    assert_eq!(cfg.tta().unwrap(), None);
    let cfg = TrainConfig::from_toml_str("[inference]\ntta = \"flip\"\n", "tiny").unwrap();
    assert_eq!(cfg.tta().unwrap(), Some(infer::tta::Tta::default()));
}
