//! Inference of ncct2ctpa: an NCCT volume in, a synthetic CTPA volume in HU out, with the
//! input's geometry.
//!
//! - [`checkpoint`]: a checkpoint is self-describing; [`checkpoint::load_generator`] rebuilds
//!   G from its folder alone (training writes the format, `train::checkpoint`).
//! - [`translate`]: axial slices in HU to G's input and back (window, 2.5D stack, centred air
//!   padding, crop), the code training's validation runs too.
//! - [`predict`]: a whole volume through G: resampling to the model's spacing, precision,
//!   test-time augmentation, tiles.
//! - [`tiles`]: sliding-window inference on tiles of the training crop, blended as nnU-Net does.
//! - [`tta`]: test-time augmentation (mirrors as training mirrored, as nnU-Net does).
//! - [`tensors`]: `ndarray` <-> tch.

pub mod checkpoint;
pub mod predict;
pub mod provenance;
pub mod tensors;
pub mod tiles;
pub mod translate;
pub mod tta;
