//! Checkpoints in safetensors, written atomically (temporary file, then rename).
//!
//! `checkpoint.safetensors` holds the parameters (for `eval` and for other
//! tools); `run_state.safetensors` holds the parameters again plus the run
//! state (persistent particles) and, in its metadata, the epoch and the metrics
//! so far. The run state is the single commit point of an epoch: `--resume`
//! reads only it, so a crash between two writes cannot mix epochs.

use super::{NamedTensor, NamedTensorMut};
use crate::error::{Error, Result};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename into place", path, e))
}

/// Serializes named f32 tensors with string metadata and writes them atomically.
pub fn save(
    path: &Path,
    tensors: &[NamedTensor<'_>],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), b).expect("shape matches data");
            (t.name.clone(), view)
        })
        .collect();
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Checkpoint(format!("cannot serialize {}: {e}", path.display())))?;
    write_atomic(path, &data)
}

/// A loaded safetensors file.
pub struct Loaded {
    bytes: Vec<u8>,
    path: String,
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Loaded> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Checkpoint(format!(
                "cannot read checkpoint {}: {e}; is this a run directory made by `plasticity train`?",
                path.display()
            ))
        })?;
        let loaded = Loaded {
            bytes,
            path: path.display().to_string(),
        };
        loaded.parse()?;
        Ok(loaded)
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| {
            Error::Checkpoint(format!(
                "checkpoint {} is corrupt ({e}); train again or restore it",
                self.path
            ))
        })
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    }

    /// Copies every named tensor into `targets`, checking that each exists with
    /// the same shape (a checkpoint of another architecture is refused).
    pub fn restore(&self, targets: Vec<NamedTensorMut<'_>>) -> Result<()> {
        let st = self.parse()?;
        for t in targets {
            let view = st.tensor(&t.name).map_err(|_| {
                Error::Checkpoint(format!(
                    "checkpoint {} has no tensor `{}`: it was saved by another kind of model; \
                     use a run directory made with the same config",
                    self.path, t.name
                ))
            })?;
            if view.shape() != t.shape.as_slice() || view.dtype() != Dtype::F32 {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} holds `{}` with shape {:?} ({:?}) but this network needs {:?} (F32): \
                     it was saved by another architecture; use a run directory made with the same config",
                    self.path,
                    t.name,
                    view.shape(),
                    view.dtype(),
                    t.shape
                )));
            }
            for (dst, src) in t.data.iter_mut().zip(view.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        Ok(())
    }
}
