//! One module per subcommand: its arguments (clap) and its `run`.

pub mod bench;
pub mod convert;
pub mod evaluate;
pub mod evaluate_model;
pub mod info;
pub mod predict;
pub mod prepare;
pub mod synth;
pub mod train;
