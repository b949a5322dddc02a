//! Helpers shared by the integration tests that run the binary.
#![allow(dead_code)]

use assert_cmd::Command;
use std::path::Path;

pub fn plasticity() -> Command {
    Command::cargo_bin("plasticity").unwrap()
}

/// Runs `cmd` and asserts that it succeeded, showing its stderr if not.
pub fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A run's metrics.jsonl, less the wall-clock fields (for determinism checks).
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for key in [
                "epoch_seconds",
                "train_seconds",
                "examples_per_second",
                "train_gflops",
            ] {
                v.as_object_mut().unwrap().remove(key);
            }
            v
        })
        .collect()
}
