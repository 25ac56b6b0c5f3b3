//! What the model crate's golden tests share: reading the committed PyTorch goldens.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// A file under `crates/model/tests/data/`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Every tensor of a committed safetensors golden, by name.
pub fn read(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_iter()
        .collect()
}
