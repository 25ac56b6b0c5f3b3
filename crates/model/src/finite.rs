//! Refusing non-finite weights where they enter: a checkpoint or weights file holding a NaN
//! or an infinity would otherwise load silently and then crash or poison the first step
//! (#13: a resumed run segfaulted in the sampler's backward pass; `predict` wrote an all-NaN
//! volume with exit 0).

use anyhow::bail;
use std::path::Path;
use tch::{Kind, Tensor};

/// Errors, naming `file` and the first tensor that holds a NaN or an infinity (with how many
/// and the first flat index), unless every tensor of `named` is finite.
pub fn check_finite<'a>(
    named: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    file: &Path,
) -> anyhow::Result<()> {
    for (name, t) in named {
        if !t.is_floating_point() || t.numel() == 0 {
            continue;
        }
        let bad = t.isfinite().logical_not().flatten(0, -1);
        let count = bad.sum(Kind::Int64).int64_value(&[]);
        if count > 0 {
            let first = bad.to_kind(Kind::Int64).argmax(0, false).int64_value(&[]);
            bail!(
                "{}: tensor {name:?} holds {count} non-finite value(s) (NaN or inf; the first \
                 at flat index {first}); refusing to load it (the run that wrote it diverged: \
                 resume from an earlier checkpoint)",
                file.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn names_the_file_tensor_count_and_first_index() {
        let ok = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let bad = Tensor::from_slice(&[1.0f32, f32::NAN, 2.0, f32::INFINITY]);
        let ints = Tensor::from_slice(&[1i64, 2]);
        let file = Path::new("ckpt/generator.safetensors");
        assert!(check_finite([("a", &ok), ("i", &ints)], file).is_ok());
        let err = check_finite([("a", &ok), ("b.weight", &bad)], file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generator.safetensors")
                && err.contains("\"b.weight\"")
                && err.contains("2 non-finite")
                && err.contains("index 1"),
            "{err}"
        );
    }
}
