//! Errors of the volume crate. Every error that concerns a file names it.

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

/// What went wrong reading, writing or processing a volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The OS refused an operation on a file or folder.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is not what the format allows.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The format is valid but this variant is not supported (e.g. NIfTI-2, a DICOM transfer
    /// syntax no decoder handles).
    #[error("{path}: unsupported: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// An argument or in-memory volume is inconsistent (not tied to one file).
    #[error("{0}")]
    Invalid(String),
}

impl VolumeError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
    pub fn unsupported(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

impl From<util::atomic::WriteError> for VolumeError {
    fn from(e: util::atomic::WriteError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
