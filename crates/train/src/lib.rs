//! The RegGAN training loop of ncct2ctpa.
//!
//! [`trainer::train`] runs one training from a [`config::TrainConfig`] and a prepared dataset
//! into a run folder ([`run_dir::RunDir`]): the RegGAN step (G and R together, then D), the
//! learning-rate schedule, validation on whole volumes in HU, sample grids, curves,
//! checkpoints that resume exactly, and a stop with a snapshot when a loss turns non-finite.
//! [`demo`] builds the small phantom dataset that `ncct2ctpa train` uses with no `--data`.

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod contrast;
pub mod curriculum;
pub mod demo;
pub mod distributed;
pub mod events;
pub mod image_losses;
pub mod nets;
pub mod phases;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod signals;
pub mod step;
pub mod tensorboard;
pub mod trainer;
pub mod validate;

pub use config::{Layer, TrainConfig};
pub use signals::StopFlag;
pub use trainer::{train, RunSpec, Start, TrainOutcome};
