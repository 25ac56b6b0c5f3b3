//! `model::flops` against FlopCounterMode on the PyTorch twin
//! (`tests/data/flops_torch.json`, written by `tools/golden/flops_torch.py`).

use model::config::ModelConfig;
use model::flops::{
    discriminator_convs, forward_flops, generator_convs, registration_convs, step_flops,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: std::collections::BTreeMap<String, Case>,
}

#[derive(Deserialize)]
struct Case {
    preset: String,
    size: u64,
    batch: u64,
    g_forward: u64,
    r_forward: u64,
    d_forward: u64,
    step: u64,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/flops_torch.json");
    let text = std::fs::read_to_string(path).expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

/// Forward counts of each network equal the counter's exactly (same convs, same shapes).
#[test]
fn network_forward_flops_match_flop_counter() {
    let g = golden();
    assert!(g.cases.contains_key("tiny") && g.cases.contains_key("default"));
    for case in g.cases.values() {
        let cfg = ModelConfig::preset(&case.preset).unwrap();
        let (b, s) = (case.batch, case.size);
        assert_eq!(
            forward_flops(&generator_convs(&cfg.generator, b, s, s)),
            case.g_forward,
            "{} G",
            case.preset
        );
        assert_eq!(
            forward_flops(&registration_convs(&cfg.registration, b, s, s)),
            case.r_forward,
            "{} R",
            case.preset
        );
        assert_eq!(
            forward_flops(&discriminator_convs(&cfg.discriminator, b, s, s)),
            case.d_forward,
            "{} D",
            case.preset
        );
    }
}

/// The whole step (forward and the backward convs autograd runs) equals the counter's count
/// of the twin's step: this pins which gradients run (see `model::flops`' docs).
#[test]
fn step_flops_match_flop_counter() {
    for case in golden().cases.values() {
        let cfg = ModelConfig::preset(&case.preset).unwrap();
        let f = step_flops(&cfg, true, case.batch, case.size, case.size);
        assert_eq!(f.total, case.step, "{} step: ours {f:?}", case.preset);
    }
}
