//! R's optional bottleneck self-attention (`model::attention`): identity at initialisation,
//! its parameter count in the model summary, and that it learns (gradients reach gamma and
//! the projections once gamma moves). The forward itself is checked against the PyTorch twin in
//! `tests/parity.rs` (`registration_attention_and_plain_d_match_pytorch`).

use model::attention::{query_channels, SelfAttention};
use model::config::ModelConfig;
use model::registration::RegistrationNet;
use model::summary::ModelSummary;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// libtorch's RNG is process-wide and tests run in parallel threads: the tests here that seed
/// or draw from it take this lock, or one could draw between the other's seed and its use.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().to_kind(Kind::Double).double_value(&[])
}

/// The block starts with gamma = 0, and it is built after the UNet's variables, so the same
/// seed gives the same UNet weights: R with attention equals R without it, exactly.
#[test]
fn registration_with_attention_starts_as_without() {
    let _rng = rng_lock();
    let mut cfg = ModelConfig::preset("tiny").unwrap().registration;
    cfg.head_init_std = 0.1; // a flow far from zero, so equality means something
    tch::manual_seed(3);
    let vs_plain = VarStore::new(Device::Cpu);
    let plain = RegistrationNet::new(&vs_plain.root(), &cfg);
    cfg.attention = true;
    tch::manual_seed(3);
    let vs_attn = VarStore::new(Device::Cpu);
    let attn = RegistrationNet::new(&vs_attn.root(), &cfg);
    assert!(plain.attention().is_none());
    assert_eq!(attn.attention().unwrap().gamma().double_value(&[0]), 0.0);
    let a = Tensor::rand([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let b = Tensor::rand([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let (fa, fb) = tch::no_grad(|| {
        (
            plain.forward_t(&a, &b, false),
            attn.forward_t(&a, &b, false),
        )
    });
    assert_eq!(fa.size(), vec![2, 2, 32, 32]);
    assert!(max_abs(&fa) > 1e-3);
    assert_eq!(max_abs(&(&fa - &fb)), 0.0);
}

/// Tiny R: bottleneck width min(8 * 2^2, 16) = 16, C' = 2: query and key 16 * 2 + 2 each,
/// value 16 * 16 + 16, gamma 1 = 341 parameters, in R's count and shown by `info`.
#[test]
fn summary_counts_the_attention_parameters() {
    let _rng = rng_lock(); // the summary builds the networks, drawing their initial weights
    assert_eq!(query_channels(16), 2);
    assert_eq!(query_channels(4), 1);
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    let without = ModelSummary::for_config(&cfg);
    cfg.registration.attention = true;
    let with = ModelSummary::for_config(&cfg);
    assert_eq!(without.registration_attention, 0);
    assert_eq!(with.registration_attention, 341);
    assert_eq!(
        with.registration.trainable - without.registration.trainable,
        341
    );
    assert_eq!(with.generator, without.generator);
    let table = with.to_string();
    assert!(table.contains("of which attention"), "{table}");
    assert!(!without.to_string().contains("attention"));
}

/// At gamma = 0 only gamma gets a gradient (the attention output is multiplied by it); once
/// gamma moves, the query, key and value projections learn too, and the output changes.
#[test]
fn gradients_reach_gamma_then_the_projections() {
    let _rng = rng_lock();
    let vs = VarStore::new(Device::Cpu);
    let block = SelfAttention::new(&(vs.root() / "attn"), 16);
    let x = Tensor::randn([2, 16, 4, 5], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([2, 16, 4, 5], (Kind::Float, Device::Cpu));
    let loss = (block.forward(&x) - &target).square().mean(Kind::Float);
    loss.backward();
    assert!(max_abs(&block.gamma().grad()) > 0.0);
    for p in block.parameters() {
        let _ = p.grad().zero_();
    }
    tch::no_grad(|| {
        let _ = block.gamma().shallow_clone().fill_(0.5);
    });
    let y = block.forward(&x);
    assert!(max_abs(&(&y - &x)) > 1e-3, "gamma = 0.5 changes the output");
    (y - &target).square().mean(Kind::Float).backward();
    let vars = vs.variables();
    for name in ["attn.query.weight", "attn.key.weight", "attn.value.weight"] {
        assert!(max_abs(&vars[name].grad()) > 0.0, "{name} got no gradient");
    }
    assert_eq!(block.parameters().len(), 7);
}
