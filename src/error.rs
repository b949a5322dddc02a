//! Errors as values: each says what is wrong and what to do about it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is missing, malformed, or fails its checksum.
    #[error("{0}")]
    Data(String),
    /// A preset, config file or option is wrong.
    #[error("{0}")]
    Config(String),
    /// A checkpoint or run directory cannot be used.
    #[error("{0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The GPU is missing or failed.
    #[error("{0}")]
    Device(String),
    /// Training produced NaN or infinity.
    #[error(
        "training diverged in epoch {epoch}: {what} of layer {layer} is not finite (NaN or inf); \
         lower the learning rates or beta, then train again"
    )]
    Diverged {
        epoch: usize,
        layer: String,
        what: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}
