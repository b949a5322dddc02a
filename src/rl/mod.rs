//! Reward-driven learning on control tasks.

pub mod actor_critic;
pub mod cartpole;
pub mod estimator;
pub mod run;
