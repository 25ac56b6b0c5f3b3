//! Datasets for ncct2ctpa: discovery and pairing of raw NCCT/CTPA cases, the prepared
//! slice store that training reads at random, sampling and augmentation, and the seeded
//! chest phantom generator that stands in for real data on machines that cannot hold any.
//!
//! No deep-learning dependency: the trainer turns the `f32` slices this crate yields into
//! tensors.

pub mod augment;
pub mod cases;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod manifest;
pub mod phantom;
pub mod prepare;
pub mod raw;
pub mod sampler;
pub mod store;
