//! The generative model as a user runs it: training through the common loop
//! (learning, determinism, resume), then sample, infer, parzen and inpaint on
//! the trained run, and their plain errors on the wrong kind of run.

mod common;

use common::{metrics, plasticity, succeeds};
use std::path::Path;

/// 1,000 MNIST digits, 200 for validation and test, a small model.
fn train(out: &Path, epochs: &str, resume: bool) {
    let mut cmd = plasticity();
    cmd.args(["train", "--epochs", epochs, "--threads", "2"]);
    if resume {
        cmd.arg("--resume");
    } else {
        cmd.args(["--limit", "1000", "--eval-limit", "200", "--config"])
            .arg(out.parent().unwrap().join("small.toml"));
    }
    let status = cmd.arg("--out").arg(out).output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn small_config(dir: &Path) {
    std::fs::write(
        dir.join("small.toml"),
        "preset = \"generative-mnist-2h\"\nlayers = [784, 200, 30]\ninference_steps = 5\n\
         learning_rates = [0.003, 0.003]\nbatch_size = 50\n",
    )
    .unwrap();
}

#[test]
fn trains_learns_resumes_and_its_commands_run() {
    let tmp = tempfile::tempdir().unwrap();
    small_config(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    train(&a, "3", false);
    let m = metrics(&a);
    assert_eq!(m.len(), 3);
    let cost = |i: usize, k: &str| m[i][k].as_f64().unwrap();
    // Reconstruction after inference improves with training.
    assert!(cost(2, "val_cost") < 0.8 * cost(0, "val_cost"), "{m:?}");
    assert!(cost(2, "val_error") < cost(0, "val_error"), "{m:?}");
    for key in [
        "log_p_inferred",
        "log_p_feed_forward_x",
        "h1_spread",
        "h2_mean",
        "parzen_val",
    ] {
        assert!(m[2][key].as_f64().unwrap().is_finite(), "{key}");
    }
    // Two epochs, then one more by --resume: the same numbers as three in one go.
    train(&b, "2", false);
    train(&b, "3", true);
    assert_eq!(metrics(&b), m);
    let (ta, tb) = (
        std::fs::read(a.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(b.join("checkpoint.safetensors")).unwrap(),
    );
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ta).unwrap(),
        safetensors::SafeTensors::deserialize(&tb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    assert!(
        names.contains(&"f1.weight") && names.contains(&"prior.var"),
        "{names:?}"
    );
    for name in names {
        assert_eq!(
            ta.tensor(name).unwrap().data(),
            tb.tensor(name).unwrap().data(),
            "{name}"
        );
    }
    // `pack` codes only bounded states at 8 bits: Adam's moments stay exact.
    let packed = tmp.path().join("packed.safetensors");
    succeeds(
        plasticity()
            .args(["pack", "--run"])
            .arg(&b)
            .arg("--out")
            .arg(&packed),
    );
    let full = std::fs::read(b.join("run_state.safetensors")).unwrap();
    let unpacked = zstd::stream::decode_all(std::fs::read(&packed).unwrap().as_slice()).unwrap();
    let (full, unpacked) = (
        safetensors::SafeTensors::deserialize(&full).unwrap(),
        safetensors::SafeTensors::deserialize(&unpacked).unwrap(),
    );
    assert!(full.names().iter().any(|n| n.starts_with("adam.v.")));
    for name in full.names() {
        assert_eq!(
            full.tensor(name).unwrap().data(),
            unpacked.tensor(name).unwrap().data(),
            "{name}"
        );
    }

    succeeds(
        plasticity()
            // The mixture prior (EM on the run's inferred codes) on the way.
            .args([
                "sample",
                "--count",
                "16",
                "--prior",
                "mixture",
                "--components",
                "3",
            ])
            .arg("--run")
            .arg(&a),
    );
    for f in [
        "samples_ancestral.png",
        "samples_refined.png",
        "chain.png",
        "parzen_curve.png",
    ] {
        assert!(a.join(f).exists(), "{f}");
    }
    succeeds(
        plasticity()
            .args(["infer", "--count", "50", "--steps", "4", "--run"])
            .arg(&a),
    );
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("inference.json")).unwrap()).unwrap();
    assert_eq!(trace["settings"][0]["log_p"].as_array().unwrap().len(), 5);

    succeeds(
        plasticity()
            .args(["parzen", "--count", "300", "--rounds", "1", "--run"])
            .arg(&a),
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("parzen.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert!(r["parzen_test"].as_f64().unwrap().is_finite());
        assert!(r["frechet"].as_f64().unwrap() >= 0.0);
    }
    // Real training digits are the reference: nearer the test set than samples.
    assert!(rows[2]["frechet"].as_f64().unwrap() < rows[0]["frechet"].as_f64().unwrap());

    succeeds(
        plasticity()
            .args([
                "inpaint",
                "--mask",
                "bottom-half",
                "--count",
                "100",
                "--steps",
                "3",
                "--run",
            ])
            .arg(&a),
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("inpaint_bottom-half.json")).unwrap())
            .unwrap();
    assert_eq!(r["model"].as_array().unwrap().len(), 3);
    assert!(a.join("inpaint_bottom-half.png").exists());
    // The classifier must be an EP run, not a generative one.
    let out = plasticity()
        .args(["inpaint", "--classifier"])
        .arg(&a)
        .arg("--run")
        .arg(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds a generative model"),
        "{err}"
    );
}

#[test]
fn generative_commands_refuse_other_runs_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let ep = tmp.path().join("ep");
    let out = plasticity()
        .args([
            "train",
            "--limit",
            "100",
            "--eval-limit",
            "50",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&ep)
        .output()
        .unwrap();
    assert!(out.status.success());
    for cmd in ["sample", "parzen", "inpaint", "infer"] {
        let out = plasticity().args([cmd, "--run"]).arg(&ep).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !err.contains("panicked"),
            "{cmd}: {err}"
        );
        assert!(err.contains("not a generative model"), "{cmd}: {err}");
    }
    let out = plasticity()
        .args(["inpaint", "--mask", "top-half", "--run"])
        .arg(&ep)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = plasticity()
        .args(["parzen", "--count", "0", "--run"])
        .arg(&ep)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count must be at least 1"));
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "preset = \"generative-mnist-2h\"\ncorruption = [0.5]\n",
    )
    .unwrap();
    let out = plasticity()
        .args(["train", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corruption one entry each"), "{err}");
}
