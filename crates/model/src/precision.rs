//! The precision of forward passes, one type for training (`amp = ...` in the run's config)
//! and inference (`predict --precision ...`).
//!
//! Autocast (libtorch's, through `torchext::AutocastGuard`) runs convolutions and matrix
//! products in the reduced dtype and keeps normalisations and reductions in fp32; weights stay
//! fp32. Which precision may run on which device is the caller's policy: training refuses
//! reduced precision on the CPU (measured slower there), inference allows bf16 on the CPU with
//! a warning.

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tch::Kind;

/// Precision of forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in float32 (`"off"` in a training config, `fp32` on the command line).
    #[default]
    #[serde(rename = "off", alias = "fp32")]
    Fp32,
    /// Autocast to bfloat16 (fp32's exponent range: no loss scaling needed).
    Bf16,
    /// Autocast to float16 (CUDA only; training scales the loss, see `train::amp`).
    F16,
}

impl Precision {
    /// Parses `fp32` (also `off`, `f32`, `float32`), `bf16` (`bfloat16`) or `f16` (`fp16`,
    /// `float16`, `half`), in any case.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "off" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            other => bail!("unknown precision {other:?}: expected fp32, bf16 or f16"),
        }
    }

    /// The autocast dtype, `None` for fp32.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::F16 => Some(Kind::Half),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Training configs say "off", the command line "fp32": both are fp32, and a config
    /// written by this build reads back unchanged.
    #[test]
    fn parses_and_serializes_both_spellings() {
        assert_eq!(Precision::parse("BF16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("fp16").unwrap(), Precision::F16);
        assert_eq!(Precision::parse("off").unwrap(), Precision::Fp32);
        assert!(Precision::parse("int8").is_err());
        #[derive(Serialize, Deserialize)]
        struct T {
            amp: Precision,
        }
        let t: T = serde_json::from_str(r#"{"amp": "fp32"}"#).unwrap();
        assert_eq!(t.amp, Precision::Fp32);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"amp":"off"}"#);
        let t: T = serde_json::from_str(r#"{"amp": "f16"}"#).unwrap();
        assert_eq!(t.amp.autocast_kind(), Some(Kind::Half));
    }
}
