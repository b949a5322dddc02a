//! Reward-driven learning on control tasks.

pub mod cartpole;
