//! Torch-free helpers that every floor of ncct2ctpa uses, at the bottom of the crate graph:
//!
//! - [`atomic`]: file and folder output that a reader never sees half written;
//! - [`checksum`]: SHA-256 of a file or a folder (a DICOM series);
//! - [`lock`]: an exclusive lock on an output folder that a dead holder never leaves behind;
//! - [`canvas`] and [`preview`]: the small RGB raster behind every figure (phantom previews,
//!   sample grids, curves), display windows and tile grids, saved as PNG.
//!
//! Errors are plain I/O errors with the path ([`atomic::WriteError`]), so callers keep their
//! own error types.

pub mod atomic;
pub mod canvas;
pub mod checksum;
pub mod lock;
pub mod preview;
