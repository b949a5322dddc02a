//! Spiking neurons and STDP as a gradient rule (Bengio et al., arXiv 1509.05936).
//!
//! `neuron` holds the membranes and firing rules, `stdp` the rule
//! dW = eta S_pre dV_post/dt, the pairing and random-train protocols, and the
//! exponential fits of the windows they produce.

pub mod neuron;
pub mod stdp;
