//! Data: IDX reading and validation, the MNIST splits, checksums.
//!
//! MNIST ships gzip'd under `data/mnist/` and is verified by SHA-256 of the
//! decompressed bytes. Any directory with the four standard IDX files (raw or
//! gzip'd) works the same way through `--data` (Fashion-MNIST, for one); such a
//! directory may hold a `SHA256SUMS` file (sha256sum's format, raw file names),
//! which is then checked too.

pub mod idx;

use crate::error::{Error, Result};
use crate::tensor::Matrix;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// SHA-256 of the raw (decompressed) MNIST files, from DESIGN.md §1.
pub const MNIST_SHA256: [(&str, &str); 4] = [
    (
        TRAIN_IMAGES,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        TRAIN_LABELS,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        TEST_IMAGES,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        TEST_LABELS,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// Number of classes every dataset here has.
pub const CLASSES: usize = 10;

/// The MNIST copy that ships in the repository.
pub fn default_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))
}

/// Images as flat rows with pixels scaled to [0, 1], and their labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Matrix,
    pub labels: Vec<u8>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn features(&self) -> usize {
        self.images.cols
    }

    /// Keeps rows `..at` and returns rows `at..`, moving the data, not copying it.
    pub fn split_off(&mut self, at: usize) -> Dataset {
        let rest = self.images.data.split_off(at * self.images.cols);
        let rows = self.images.rows - at;
        self.images.rows = at;
        Dataset {
            images: Matrix::from_vec(rows, self.images.cols, rest),
            labels: self.labels.split_off(at),
        }
    }

    /// Rows `r0..r1` as a new dataset.
    pub fn slice(&self, r0: usize, r1: usize) -> Dataset {
        Dataset {
            images: Matrix::from_vec(
                r1 - r0,
                self.images.cols,
                self.images.data[r0 * self.images.cols..r1 * self.images.cols].to_vec(),
            ),
            labels: self.labels[r0..r1].to_vec(),
        }
    }
}

/// The papers' splits: train = the training file less its last sixth (50,000 of
/// MNIST's 60,000), validation = that last sixth, test = the t10k file.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

impl Splits {
    /// The split named `train`, `val` or `test`.
    pub fn named(&self, name: &str) -> Result<&Dataset> {
        match name {
            "train" => Ok(&self.train),
            "val" => Ok(&self.val),
            "test" => Ok(&self.test),
            other => Err(Error::Config(format!(
                "unknown split `{other}`; use train, val or test"
            ))),
        }
    }
}

/// Loads and validates a directory of the four IDX files.
pub fn load(dir: &Path) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "data directory {} does not exist; point --data at a directory holding the four \
             standard IDX files, or restore data/mnist from the repository",
            dir.display()
        )));
    }
    let sums = expected_sums(dir)?;
    let read = |name: &str, ndims: usize| -> Result<idx::IdxArray> {
        let path = idx::find(dir, name)?;
        let bytes = idx::read_bytes(&path)?;
        if let Some((_, want)) = sums.iter().find(|(n, _)| n == name) {
            let got = sha256_hex(&bytes);
            if &got != want {
                return Err(Error::Data(format!(
                    "data file {} fails its checksum (sha256 {got}, expected {want}); it is \
                     corrupt or not the original: restore it from the repository",
                    path.display()
                )));
            }
        }
        idx::parse(&bytes, ndims, &path.display().to_string())
    };
    let full = to_dataset(read(TRAIN_IMAGES, 3)?, read(TRAIN_LABELS, 1)?, dir)?;
    let test = to_dataset(read(TEST_IMAGES, 3)?, read(TEST_LABELS, 1)?, dir)?;
    if full.len() < 6 || test.is_empty() {
        return Err(Error::Data(format!(
            "data in {} is too small: {} training and {} test examples (need at least 6 training \
             images, the last sixth of which become the validation set, and 1 test image)",
            dir.display(),
            full.len(),
            test.len()
        )));
    }
    if full.features() != test.features() {
        return Err(Error::Data(format!(
            "training images have {} pixels but test images have {}; the files in {} do not belong together",
            full.features(),
            test.features(),
            dir.display()
        )));
    }
    let mut train = full;
    let val = train.split_off(train.len() - train.len() / 6);
    Ok(Splits { train, val, test })
}

/// Checksums to enforce: MNIST's own for the shipped copy, plus any SHA256SUMS file.
fn expected_sums(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut sums = Vec::new();
    if dir == default_dir() {
        sums.extend(
            MNIST_SHA256
                .iter()
                .map(|(n, h)| (n.to_string(), h.to_string())),
        );
    }
    let file = dir.join("SHA256SUMS");
    if file.is_file() {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::io("cannot read checksum file", &file, e))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(hash), Some(name)) if hash.len() == 64 => {
                    let name = name.trim_start_matches('*').trim_end_matches(".gz");
                    sums.push((name.to_string(), hash.to_lowercase()));
                }
                _ => {
                    return Err(Error::Data(format!(
                        "{} has a malformed line {line:?}; expected `<sha256>  <file name>`",
                        file.display()
                    )));
                }
            }
        }
    }
    Ok(sums)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn to_dataset(images: idx::IdxArray, labels: idx::IdxArray, dir: &Path) -> Result<Dataset> {
    let n = images.dims[0];
    if labels.dims[0] != n {
        return Err(Error::Data(format!(
            "{} images but {} labels in {}; the image and label files do not belong together",
            n,
            labels.dims[0],
            dir.display()
        )));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= CLASSES)
    {
        return Err(Error::Data(format!(
            "label {l} of example {i} in {} is out of range 0..{}; only {CLASSES}-class data is supported",
            dir.display(),
            CLASSES - 1
        )));
    }
    let features = images.dims[1] * images.dims[2];
    let pixels = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Dataset {
        images: Matrix::from_vec(n, features, pixels),
        labels: labels.data,
    })
}

/// Writes a small synthetic dataset in IDX form (for tests and examples): each
/// class lights up its own band of pixels, plus noise from `seed`.
pub fn write_synthetic(dir: &Path, n_train: usize, n_test: usize, side: usize, seed: u64) {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let mut make = |n: usize| {
        let mut img = Vec::with_capacity(n * side * side);
        let mut lab = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % CLASSES) as u8;
            lab.push(class);
            for p in 0..side * side {
                let band = (p * CLASSES / (side * side)) as u8 == class;
                let noise = (next() % 40) as u8;
                img.push(if band { 200 + noise / 2 } else { noise });
            }
        }
        (img, lab)
    };
    std::fs::create_dir_all(dir).unwrap();
    let (img, lab) = make(n_train);
    std::fs::write(
        dir.join(TRAIN_IMAGES),
        idx::encode(&[n_train, side, side], &img),
    )
    .unwrap();
    std::fs::write(dir.join(TRAIN_LABELS), idx::encode(&[n_train], &lab)).unwrap();
    let (img, lab) = make(n_test);
    std::fs::write(
        dir.join(TEST_IMAGES),
        idx::encode(&[n_test, side, side], &img),
    )
    .unwrap();
    std::fs::write(dir.join(TEST_LABELS), idx::encode(&[n_test], &lab)).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_mnist_loads_with_papers_splits() {
        let s = load(&default_dir()).unwrap();
        assert_eq!(
            (s.train.len(), s.val.len(), s.test.len()),
            (50_000, 10_000, 10_000)
        );
        assert_eq!(s.train.features(), 784);
        // The first training digit of MNIST is a 5, the first test digit a 7.
        assert_eq!(s.train.labels[0], 5);
        assert_eq!(s.test.labels[0], 7);
        let max = s.train.images.data.iter().cloned().fold(0.0, f32::max);
        let min = s.train.images.data.iter().cloned().fold(1.0, f32::min);
        assert_eq!((min, max), (0.0, 1.0));
    }

    #[test]
    fn synthetic_roundtrip_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(dir.path(), 60, 20, 4, 7);
        let s = load(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (50, 10, 20));
        let raw = std::fs::read(dir.path().join(TRAIN_LABELS)).unwrap();
        let good = format!("{}  {}\n", sha256_hex(&raw), TRAIN_LABELS);
        std::fs::write(dir.path().join("SHA256SUMS"), &good).unwrap();
        assert!(load(dir.path()).is_ok());
        let bad = good.replace(&good[..4], "0000");
        std::fs::write(dir.path().join("SHA256SUMS"), bad).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
    }

    #[test]
    fn mismatched_counts_and_labels_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_synthetic(dir.path(), 60, 20, 4, 7);
        std::fs::write(dir.path().join(TRAIN_LABELS), idx::encode(&[59], &[1; 59])).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("60 images but 59 labels"), "{err}");
        std::fs::write(dir.path().join(TRAIN_LABELS), idx::encode(&[60], &[12; 60])).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }
}
