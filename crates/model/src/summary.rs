//! Parameter counts of the three networks for a configuration (`ncct2ctpa info --model`).

use std::fmt;

use serde::Serialize;
use tch::nn::{self, VarStore};
use tch::Device;

use crate::config::ModelConfig;
use crate::discriminator::Discriminator;
use crate::generator::Generator;
use crate::registration::RegistrationNet;

/// Variable counts of one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NetworkCount {
    /// Elements of every variable saved in a checkpoint: the trainable parameters plus the
    /// non-trainable state (spectral-norm u/v vectors, batch-norm running statistics).
    pub total: i64,
    /// Elements of the trainable parameters (what PyTorch's `sum(p.numel() for p in
    /// net.parameters())` counts).
    pub trainable: i64,
}

impl NetworkCount {
    /// Counts the variables of `vs`.
    pub fn of(vs: &VarStore) -> Self {
        let total = vs.variables().values().map(|t| t.numel() as i64).sum();
        let trainable = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        Self { total, trainable }
    }
}

/// Parameter counts of G, R and D.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub generator: NetworkCount,
    pub registration: NetworkCount,
    pub discriminator: NetworkCount,
    /// Trainable parameters of R's bottleneck self-attention block (included in
    /// `registration`; 0 without it).
    pub registration_attention: i64,
    /// Input height and width must be multiples of this.
    pub size_multiple: i64,
}

impl ModelSummary {
    /// Builds each network on the CPU (without gradients) and counts its variables, so the
    /// figures are those of the real modules, not of a formula that could drift from them.
    pub fn for_config(cfg: &ModelConfig) -> ModelSummary {
        let count = |build: &dyn Fn(&nn::Path)| {
            let vs = VarStore::new(Device::Cpu);
            tch::no_grad(|| build(&vs.root()));
            NetworkCount::of(&vs)
        };
        let registration_attention = {
            let vs = VarStore::new(Device::Cpu);
            tch::no_grad(|| {
                let r = RegistrationNet::new(&vs.root(), &cfg.registration);
                r.attention()
                    .map_or(0, |a| a.parameters().iter().map(|t| t.numel() as i64).sum())
            })
        };
        ModelSummary {
            generator: count(&|p| {
                Generator::new(p, &cfg.generator);
            }),
            registration: count(&|p| {
                RegistrationNet::new(p, &cfg.registration);
            }),
            registration_attention,
            discriminator: count(&|p| {
                Discriminator::new(p, &cfg.discriminator);
            }),
            size_multiple: cfg.size_multiple(),
        }
    }
}

impl fmt::Display for ModelSummary {
    /// A table: one row per network, trainable and total counts with thousands separators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<22} {:>14} {:>14}", "network", "trainable", "total")?;
        let rows = [
            ("G generator", self.generator),
            ("R registration", self.registration),
            ("D discriminator", self.discriminator),
        ];
        for (name, c) in rows {
            writeln!(
                f,
                "{:<22} {:>14} {:>14}",
                name,
                thousands(c.trainable),
                thousands(c.total)
            )?;
            if name.starts_with('R') && self.registration_attention > 0 {
                let a = thousands(self.registration_attention);
                writeln!(f, "{:<22} {:>14} {:>14}", "  of which attention", a, a)?;
            }
        }
        write!(f, "input size multiple: {}", self.size_multiple)
    }
}

/// 62444609 -> "62,444,609".
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(62_444_609), "62,444,609");
        assert_eq!(thousands(-1_234), "-1,234");
    }
}
