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
    /// R's bottleneck self-attention on (absent in older files: off).
    #[serde(default)]
    registration_attention: bool,
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

fn config(case: &Case) -> ModelConfig {
    let mut cfg = ModelConfig::preset(&case.preset).unwrap();
    cfg.registration.attention = case.registration_attention;
    cfg
}

/// R's attention block adds its 1x1 convs and two matrix products (the golden's counts with
/// and without it differ by exactly those).
#[test]
fn attention_adds_its_convs_and_matrix_products() {
    let g = golden();
    let (with, without) = (&g.cases["tiny_attention"], &g.cases["tiny"]);
    let cfg = config(with);
    // tiny R: depth 2, bottleneck width min(8 * 4, 16) = 16, C' = 2; 64 px -> 16 x 16 = 256
    let (b, c, qc, n) = (2u64, 16u64, 2u64, 256u64);
    let extra = 2 * (b * n * (2 * c * qc + c * c) + b * n * n * qc + b * c * n * n);
    assert_eq!(with.r_forward - without.r_forward, extra);
    assert_eq!(
        forward_flops(&registration_convs(&cfg.registration, b, 64, 64)),
        with.r_forward
    );
}

/// Forward counts of each network equal the counter's exactly (same convs, same shapes).
#[test]
fn network_forward_flops_match_flop_counter() {
    let g = golden();
    assert!(g.cases.contains_key("tiny") && g.cases.contains_key("default"));
    assert!(g.cases.contains_key("tiny_attention") && g.cases.contains_key("default_attention"));
    for case in g.cases.values() {
        let cfg = config(case);
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
        let cfg = config(case);
        let f = step_flops(&cfg, true, case.batch, case.size, case.size);
        assert_eq!(f.total, case.step, "{} step: ours {f:?}", case.preset);
    }
}

/// R across slices: the step counts G's forward three times (one pass over the slices below,
/// at and above) and R with four input and three output channels; without R the key changes
/// nothing.
#[test]
fn across_slices_g_runs_three_times_and_r_sees_four_channels() {
    let plain = ModelConfig::preset("tiny").unwrap();
    let mut across = plain.clone();
    across.registration.through_plane = true;
    let (p, a) = (
        step_flops(&plain, true, 2, 64, 64),
        step_flops(&across, true, 2, 64, 64),
    );
    assert_eq!(a.g_forward, 3 * p.g_forward);
    assert!(
        a.r_forward > p.r_forward,
        "{} vs {}",
        a.r_forward,
        p.r_forward
    );
    // R's first conv sees 4 channels instead of 2
    let first = |m: &ModelConfig| registration_convs(&m.registration, 2, 64, 64)[0].macs;
    assert_eq!(first(&across), 2 * first(&plain));
    assert_eq!(
        step_flops(&across, false, 2, 64, 64),
        step_flops(&plain, false, 2, 64, 64)
    );
}
