//! Inference of ncct2ctpa: an NCCT volume in, a synthetic CTPA volume in HU out, with the
//! input's geometry; and evaluation of predictions against targets.

pub mod evaluate;
pub mod predict;
