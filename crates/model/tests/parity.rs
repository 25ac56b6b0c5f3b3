//! Parity with the PyTorch twin (tools/pytorch_twin/reggan_twin.py): the same weights and
//! inputs give the same G, R, D and warp outputs to 1e-4, including a training-mode forward
//! of D (one spectral-norm power iteration) and the u/v vectors it leaves behind.
//!
//! Golden files: crates/model/tests/data/parity_*, made by tools/golden/model_parity.py.

mod common;
use common::{data, read};

use model::config::ModelConfig;
use model::discriminator::Discriminator;
use model::generator::Generator;
use model::registration::RegistrationNet;
use model::summary::ModelSummary;
use model::warp::warp;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

const TOL: f64 = 1e-4;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn assert_close(what: &str, ours: &Tensor, golden: &Tensor) {
    let diff = max_abs_diff(ours, golden);
    let scale = golden.abs().max().double_value(&[]);
    eprintln!("{what}: max |ours - torch| = {diff:.2e} (golden max {scale:.3})");
    assert!(
        diff <= TOL,
        "{what}: max |ours - torch| = {diff:e} (golden max {scale})"
    );
    // guard against a trivially matching output
    assert!(
        scale > 1e-3,
        "{what}: golden output is ~0, the comparison would prove nothing"
    );
}

/// Loads a twin's weights into `vs` after checking that the names are exactly ours.
fn load(vs: &mut VarStore, file: &str) {
    let golden: Vec<String> = {
        let mut k: Vec<String> = read(file).into_keys().collect();
        k.sort();
        k
    };
    let mut ours: Vec<String> = vs.variables().into_keys().collect();
    ours.sort();
    assert_eq!(
        ours, golden,
        "{file}: variable names differ from the twin's state_dict"
    );
    vs.load(data(file)).unwrap();
}

fn config(case: &str) -> ModelConfig {
    let text = std::fs::read_to_string(data(&format!("parity_{case}_config.json"))).unwrap();
    // deny_unknown_fields: the twin's config keys must be ours
    serde_json::from_str(&text).unwrap()
}

fn check_case(case: &str) {
    let cfg = config(case);
    let io = read(&format!("parity_{case}_io.safetensors"));

    let mut vs_g = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs_g.root(), &cfg.generator);
    load(&mut vs_g, &format!("parity_{case}_g.safetensors"));
    let mut vs_r = VarStore::new(Device::Cpu);
    let r = RegistrationNet::new(&vs_r.root(), &cfg.registration);
    load(&mut vs_r, &format!("parity_{case}_r.safetensors"));
    let mut vs_d = VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs_d.root(), &cfg.discriminator);
    load(&mut vs_d, &format!("parity_{case}_d.safetensors"));

    tch::no_grad(|| {
        let ncct = &io["ncct"];
        let g_eval = g.forward_t(ncct, false);
        assert_close(&format!("{case} G eval"), &g_eval, &io["g_eval"]);

        // R on the twin's G output, so R's check does not inherit G's rounding
        let flow = r.forward_t(&io["g_eval"], &io["ctpa"], false);
        assert_close(&format!("{case} R flow"), &flow, &io["r_flow"]);

        let ncct_first = ncct.narrow(1, 0, 1);
        let d_input = d.input(&io["g_eval"], &ncct_first);
        assert_eq!(max_abs_diff(&d_input, &io["d_input"]), 0.0);
        assert_close(
            &format!("{case} D eval"),
            &d.forward_t(&d_input, false),
            &io["d_eval"],
        );
        // eval changes nothing: the same forward again gives the same logits
        assert_close(
            &format!("{case} D eval twice"),
            &d.forward_t(&d_input, false),
            &io["d_eval"],
        );
        assert_close(
            &format!("{case} D train"),
            &d.forward_t(&d_input, true),
            &io["d_train"],
        );
        let vars = vs_d.variables();
        let exported = read(&format!("parity_{case}_d.safetensors"));
        for (key, golden) in io
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("after.").map(|n| (n, v)))
        {
            let diff = max_abs_diff(&vars[key], golden);
            assert!(
                diff <= TOL,
                "{case} D {key} after the power iteration: {diff:e}"
            );
            if key.ends_with("weight_u") && golden.numel() > 1 {
                // (a one-element u is the unit scalar +-1 and cannot move)
                // the train forward really moved u, so this check covers the iteration
                let moved = max_abs_diff(&exported[key], golden);
                assert!(moved > 1e-4, "{case} D {key} did not move");
            }
        }
        assert_close(
            &format!("{case} D eval after"),
            &d.forward_t(&d_input, false),
            &io["d_eval_after"],
        );

        // last: G in train mode (batch norm then updates its running statistics)
        assert_close(
            &format!("{case} G train"),
            &g.forward_t(ncct, true),
            &io["g_train"],
        );
    });
}

#[test]
fn tiny_preset_matches_pytorch() {
    check_case("tiny");
}

#[test]
fn batch_norm_gelu_conditional_config_matches_pytorch() {
    let cfg = config("small");
    assert!(cfg.discriminator.conditional && cfg.generator.in_channels == 3);
    check_case("small");
}

/// R with the bottleneck self-attention (gamma set to 0.8 by the golden script, so the block
/// is not the identity) and D without spectral norm.
#[test]
fn registration_attention_and_plain_d_match_pytorch() {
    let cfg = config("attention");
    assert!(cfg.registration.attention && !cfg.discriminator.spectral_norm);
    check_case("attention");
    // the attention really contributes: without it, the same weights give another flow
    let io = read("parity_attention_io.safetensors");
    let mut vs = VarStore::new(Device::Cpu);
    let r = RegistrationNet::new(&vs.root(), &cfg.registration);
    load(&mut vs, "parity_attention_r.safetensors");
    tch::no_grad(|| {
        let gamma = r.attention().expect("attention block").gamma();
        assert!((gamma.double_value(&[0]) - 0.8).abs() < 1e-6);
        let _ = gamma.shallow_clone().fill_(0.0);
        let without = r.forward_t(&io["g_eval"], &io["ctpa"], false);
        let diff = max_abs_diff(&without, &io["r_flow"]);
        assert!(diff > 1e-3, "attention changed the flow by only {diff:e}");
    });
}

#[test]
fn warp_matches_pytorch_grid_sample() {
    let io = read("parity_warp.safetensors");
    let ours = warp(&io["image"], &io["flow"]);
    assert_close("warp", &ours, &io["warped"]);
    // the training default, libtorch's sampler, too
    let sampled = model::warp::warp_with(
        model::warp::WarpMethod::GridSample,
        &io["image"],
        &io["flow"],
    );
    assert_close("warp (grid_sample)", &sampled, &io["warped"]);
    // the flow really moves things: the warped image differs from the input
    assert!(max_abs_diff(&io["warped"], &io["image"]) > 0.1);
}

#[test]
fn parameter_counts_equal_the_twins() {
    let text = std::fs::read_to_string(data("parity_param_counts.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let presets = doc["trainable"].as_object().unwrap();
    let mut names: Vec<&str> = presets.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut ours_names = ModelConfig::preset_names().to_vec();
    ours_names.sort_unstable();
    assert_eq!(names, ours_names, "the twin's presets are ours");
    for (name, counts) in presets {
        let s = ModelSummary::for_config(&ModelConfig::preset(name).unwrap());
        assert_eq!(
            s.generator.trainable,
            counts["generator"].as_i64().unwrap(),
            "{name} G"
        );
        assert_eq!(
            s.registration.trainable,
            counts["registration"].as_i64().unwrap(),
            "{name} R"
        );
        assert_eq!(
            s.discriminator.trainable,
            counts["discriminator"].as_i64().unwrap(),
            "{name} D"
        );
    }
}
