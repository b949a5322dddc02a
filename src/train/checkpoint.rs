//! Checkpoints in safetensors, written atomically (temporary file, then rename).
//!
//! `checkpoint.safetensors` holds the parameters (for `eval` and for other
//! tools); `run_state.safetensors` holds the parameters again plus the run
//! state (persistent particles) and, in its metadata, the epoch and the metrics
//! so far. The run state is the single commit point of an epoch: `--resume`
//! reads only it, so a crash between two writes cannot mix epochs.
//!
//! `pack` writes a run state whose codable tensors (clipped states such as
//! persistent particles, rows x cols = examples x units) are stored as 8-bit codes over each tensor's range and
//! transposed (cols x rows: a unit's states over all examples side by side,
//! which compresses better), the whole zstd-compressed, for carrying a run to
//! a machine that cannot take the whole state; `Loaded::read` and `restore`
//! read either kind.

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

/// Metadata key of a run state: the names (comma separated) of the run-state
/// tensors that `pack` may store at 8 bits (clipped states; none for a learner
/// whose run state is, say, optimiser moments).
pub const CODABLE_KEY: &str = "codable_tensors";
/// Metadata key prefix of an 8-bit tensor: "lo hi", the range its codes span.
const U8_RANGE_PREFIX: &str = "u8_range.";

/// One tensor as stored: name, dtype, shape, little-endian bytes.
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Stored {
    fn f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Stored {
        Stored {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn serialize(
    path: &Path,
    tensors: &[Stored],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view =
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("shape matches data");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Checkpoint(format!("cannot serialize {}: {e}", path.display())))
}

/// Serializes named f32 tensors with string metadata and writes them atomically.
pub fn save(
    path: &Path,
    tensors: &[NamedTensor<'_>],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let stored: Vec<Stored> = tensors
        .iter()
        .map(|t| Stored::f32(&t.name, t.shape.clone(), t.data))
        .collect();
    write_atomic(path, &serialize(path, &stored, metadata)?)
}

/// zstd's frame magic: a packed state starts with it, a plain safetensors
/// file never does (its first 8 bytes are a header length far below 4 GB).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd level of packed states: measured on a 3-hidden-layer run's particles,
/// 19 writes 5% less than 12 (a quarter of the 8-bit codes against 27%) at
/// about 1.4 s per 10 MB and core; carrying is what is scarce.
const PACK_LEVEL: i32 = 19;

fn compress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), PACK_LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    encoder.multithread(workers as u32)?;
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// Codes `data` as u8 over its range [lo, hi]: code q stands for
/// lo + (hi - lo) q / 255, so every value moves by at most (hi - lo) / 510 and
/// the two ends (a clipped state's 0 and 1) come back exactly.
pub fn quantize_u8(data: &[f32]) -> Option<(Vec<u8>, f32, f32)> {
    if data.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let lo = data.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if data.is_empty() {
        (0.0, 0.0)
    } else {
        (lo, hi)
    };
    let span = hi - lo;
    let codes = data
        .iter()
        .map(|&v| match span > 0.0 {
            true => ((v - lo) / span * 255.0).round().clamp(0.0, 255.0) as u8,
            false => 0,
        })
        .collect();
    Some((codes, lo, hi))
}

/// The value that `quantize_u8`'s code `q` stands for.
pub fn dequantize_u8(q: u8, lo: f32, hi: f32) -> f32 {
    (lo + (hi - lo) * (f32::from(q) / 255.0)).clamp(lo, hi)
}

/// Writes the run state at `state` to `out` with its codable tensors coded at
/// 8 bits (`quantize_u8`; everything else and the metadata stay exact), compressed
/// with zstd (clipped states sit mostly at their bounds). Returns the bytes
/// written. A run resumed from it is not bit-identical to an unbroken one.
pub fn pack(state: &Path, out: &Path) -> Result<usize> {
    let loaded = Loaded::read(state)?;
    let mut meta = loaded.metadata();
    let names: Vec<String> = meta
        .get(CODABLE_KEY)
        .map(|s| {
            s.split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} does not name its codable tensors (it predates `pack`); \
                 resume the run for one epoch with this version first",
                state.display()
            ))
        })?;
    let st = loaded.parse()?;
    let mut stored = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        if !names.contains(&name) || view.dtype() != Dtype::F32 || shape.len() != 2 {
            stored.push(Stored {
                name,
                dtype: view.dtype(),
                shape,
                bytes: view.data().to_vec(),
            });
            continue;
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (codes, lo, hi) = quantize_u8(&values).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} holds a non-finite value in `{name}`; the run diverged, resume from an earlier state",
                state.display()
            ))
        })?;
        meta.insert(format!("{U8_RANGE_PREFIX}{name}"), format!("{lo} {hi}"));
        let (rows, cols) = (shape[0], shape[1]);
        let transposed = (0..cols * rows)
            .map(|k| codes[(k % rows) * cols + k / rows])
            .collect();
        stored.push(Stored {
            name,
            dtype: Dtype::U8,
            shape: vec![cols, rows],
            bytes: transposed,
        });
    }
    let packed = compress(&serialize(out, &stored, meta)?)
        .map_err(|e| Error::io("cannot compress", out, e))?;
    write_atomic(out, &packed)?;
    Ok(packed.len())
}

/// The range of an 8-bit tensor written by `pack`, from the file's metadata.
fn u8_range(meta: &HashMap<String, String>, name: &str) -> Option<(f32, f32)> {
    let text = meta.get(&format!("{U8_RANGE_PREFIX}{name}"))?;
    let mut it = text.split(' ').map(|v| v.parse::<f32>().ok());
    Some((it.next()??, it.next()??))
}

/// A loaded safetensors file.
pub struct Loaded {
    bytes: Vec<u8>,
    path: String,
}

impl Loaded {
    /// Reads a safetensors file, or a packed one (`pack`: zstd-compressed).
    pub fn read(path: &Path) -> Result<Loaded> {
        let mut bytes = std::fs::read(path).map_err(|e| {
            Error::Checkpoint(format!(
                "cannot read checkpoint {}: {e}; is this a run directory made by `plasticity train`?",
                path.display()
            ))
        })?;
        if bytes.starts_with(&ZSTD_MAGIC) {
            bytes = zstd::stream::decode_all(bytes.as_slice()).map_err(|e| {
                Error::Checkpoint(format!(
                    "packed state {} is corrupt ({e}); pack it again",
                    path.display()
                ))
            })?;
        }
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
        // Parsed once: a run state's metadata holds every epoch's metrics.
        let meta = self.metadata();
        for t in targets {
            let view = st.tensor(&t.name).map_err(|_| {
                Error::Checkpoint(format!(
                    "checkpoint {} has no tensor `{}`: it was saved by another kind of model; \
                     use a run directory made with the same config",
                    self.path, t.name
                ))
            })?;
            let u8_range = u8_range(&meta, &t.name);
            let transposed: Vec<usize> = t.shape.iter().rev().copied().collect();
            let layout_ok = match view.dtype() {
                Dtype::F32 => view.shape() == t.shape.as_slice(),
                Dtype::U8 => u8_range.is_some() && t.shape.len() == 2 && view.shape() == transposed,
                _ => false,
            };
            if !layout_ok {
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
            match u8_range {
                Some((lo, hi)) if view.dtype() == Dtype::U8 => {
                    // Stored cols x rows: element (i, j) is code j * rows + i.
                    let (rows, cols) = (t.shape[0], t.shape[1]);
                    for (k, dst) in t.data.iter_mut().enumerate() {
                        *dst = dequantize_u8(view.data()[(k % cols) * rows + k / cols], lo, hi);
                    }
                }
                _ => {
                    for (dst, src) in t.data.iter_mut().zip(view.data().chunks_exact(4)) {
                        *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// Clipped states: many exactly at 0 or 1, the rest in between.
    fn states(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.random::<f32>() * 1.6 - 0.3).clamp(0.0, 1.0))
            .collect()
    }

    #[test]
    fn u8_codes_stay_within_half_a_step_and_keep_the_ends() {
        for (data, lo, hi) in [
            (states(5000, 1), 0.0, 1.0),
            (vec![-2.0, 0.5, 3.0, 1.25], -2.0, 3.0),
        ] {
            let (codes, qlo, qhi) = quantize_u8(&data).unwrap();
            assert_eq!((qlo, qhi), (lo, hi));
            let bound = (hi - lo) / 510.0 * (1.0 + 1e-5);
            for (&v, &q) in data.iter().zip(&codes) {
                let back = dequantize_u8(q, lo, hi);
                assert!((back - v).abs() <= bound, "{v} -> {q} -> {back}");
                if v == lo || v == hi {
                    assert_eq!(back, v, "the ends come back exactly");
                }
            }
        }
        let (codes, lo, hi) = quantize_u8(&[0.25; 7]).unwrap();
        assert!(codes.iter().all(|&q| dequantize_u8(q, lo, hi) == 0.25));
        assert!(quantize_u8(&[0.0, f32::NAN]).is_none());
    }

    #[test]
    fn pack_keeps_parameters_exact_and_codes_the_run_state() {
        let dir = tempfile::tempdir().unwrap();
        let (weights, particles) = (
            states(60, 2).iter().map(|v| v - 0.4).collect::<Vec<_>>(),
            states(300, 3),
        );
        let meta = HashMap::from([
            ("epoch".to_string(), "4".to_string()),
            (CODABLE_KEY.to_string(), "particles.s1".to_string()),
        ]);
        let full = dir.path().join("run_state.safetensors");
        let tensors = [
            NamedTensor::new("w1".into(), vec![6, 10], &weights),
            NamedTensor::new("particles.s1".into(), vec![30, 10], &particles),
        ];
        save(&full, &tensors, meta).unwrap();
        let packed = dir.path().join("packed.safetensors");
        let bytes = pack(&full, &packed).unwrap();
        assert!(bytes < std::fs::metadata(&full).unwrap().len() as usize);

        let (mut w, mut p) = (vec![0.0; 60], vec![0.0; 300]);
        let loaded = Loaded::read(&packed).unwrap();
        loaded
            .restore(vec![
                NamedTensorMut::new("w1".into(), vec![6, 10], &mut w),
                NamedTensorMut::new("particles.s1".into(), vec![30, 10], &mut p),
            ])
            .unwrap();
        assert_eq!(w, weights, "parameters stay bit-exact");
        assert!(
            p.iter()
                .zip(&particles)
                .all(|(a, b)| (a - b).abs() <= 1.0 / 510.0 + 1e-7)
        );
        assert_ne!(p, particles, "the particles were coded");
        assert_eq!(loaded.metadata()["epoch"], "4");

        // A file that does not name its run-state tensors is refused plainly.
        let old = dir.path().join("old.safetensors");
        save(&old, &tensors, HashMap::new()).unwrap();
        let err = pack(&old, &packed).unwrap_err().to_string();
        assert!(err.contains("predates `pack`"), "{err}");
    }
}
