//! plasticity: biologically plausible deep learning, measured.
//!
//! The library holds the science; the `plasticity` binary only parses
//! arguments and prints. Arrows run one way: `train` calls learners
//! (`eqprop`), learners call the matrix layer (`tensor`); `tensor` and `data`
//! know no model.

pub mod backprop;
pub mod bandit;
pub mod bench;
pub mod compare;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_layout;
pub mod data;
pub mod eqprop;
pub mod error;
pub mod generative;
pub mod gradcheck;
pub mod node_perturbation;
pub mod optim;
pub mod plot;
pub mod rl;
pub mod spiking;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
