//! The IDX file format (LeCun's MNIST format), raw or gzip'd.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of
//! dimensions, then each dimension as a big-endian u32, then the data.

use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An unsigned-byte IDX array: its dimensions and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Finds `name` or `name.gz` in `dir`.
pub fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::Data(format!(
        "data file {name} (or {name}.gz) not found in {}; point --data at a directory \
         holding the four standard IDX files, or restore data/mnist from the repository",
        dir.display()
    )))
}

/// Reads a file, decompressing it if it is gzip'd (by its magic bytes).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read data file", path, e))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 5);
        GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Data(format!(
                    "data file {} is corrupt (gzip: {e}); replace it with an intact copy",
                    path.display()
                ))
            })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes, expecting `ndims` dimensions of unsigned bytes.
pub fn parse(bytes: &[u8], ndims: usize, what: &str) -> Result<IdxArray> {
    let bad = |msg: String| {
        Error::Data(format!(
            "{what} is not a valid IDX file: {msg}; replace it with an intact copy"
        ))
    };
    if bytes.len() < 4 {
        return Err(bad(format!("only {} bytes long", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(format!(
            "wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 000008{:02x}, unsigned bytes)",
            bytes[0], bytes[1], bytes[2], bytes[3], ndims
        )));
    }
    if bytes[3] as usize != ndims {
        return Err(bad(format!(
            "it has {} dimensions, expected {ndims}",
            bytes[3]
        )));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let have = bytes.len() - header;
    if have != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} data bytes but the file holds {have} (truncated or padded)"
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Encodes an unsigned-byte IDX array (used by tests and tools that write data).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(n in 0usize..5, r in 1usize..4, c in 1usize..4, seed in any::<u8>()) {
            let data: Vec<u8> = (0..n * r * c).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let parsed = parse(&encode(&[n, r, c], &data), 3, "t").unwrap();
            prop_assert_eq!(parsed.dims, vec![n, r, c]);
            prop_assert_eq!(parsed.data, data);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes, 3, "t");
            let _ = parse(&bytes, 1, "t");
        }
    }

    #[test]
    fn rejects_bad_files() {
        let good = encode(&[2, 2, 2], &[1; 8]);
        let mut magic = good.clone();
        magic[2] = 0x0d;
        assert!(
            parse(&magic, 3, "x")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(
            parse(&good, 1, "x")
                .unwrap_err()
                .to_string()
                .contains("dimensions")
        );
        let truncated = &good[..good.len() - 1];
        assert!(
            parse(truncated, 3, "x")
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert!(
            parse(&good[..6], 3, "x")
                .unwrap_err()
                .to_string()
                .contains("header")
        );
    }
}
