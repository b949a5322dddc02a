//! The binary as a user runs it: training, determinism, resume, eval, and
//! every kind of bad input ending in one plain line (never a panic).

mod common;

use assert_cmd::Command;
use common::{metrics, plasticity, succeeds};
use std::path::Path;

/// A smoke run on real MNIST: 300 training and 200 validation/test examples.
fn smoke(out: &Path, extra: &[&str]) -> std::process::Output {
    plasticity()
        .args(["train", "--limit", "300", "--eval-limit", "200"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Runs the binary, expects failure with one plain `error:` line containing `needle`.
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("run directory") && !l.starts_with("EP "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

#[test]
fn training_writes_a_run_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let out = smoke(dir, &["--epochs", "2", "--threads", "2", "--seed", "7"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "run_state.safetensors",
        "learning_curve.png",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 2);
    assert_eq!(ma, mb, "same seed and threads must give identical metrics");
    for m in &ma {
        for key in ["train_error", "val_error", "test_error"] {
            let e = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&e), "{key} = {e}");
        }
        assert!(m["train_cost"].as_f64().unwrap() > 0.0);
    }
    // 300 examples already teach the network something: far below chance (90%).
    assert!(ma[1]["val_error"].as_f64().unwrap() < 0.5, "{:?}", ma[1]);
    // A different seed gives a different run.
    let c = tmp.path().join("c");
    assert!(
        smoke(&c, &["--epochs", "2", "--threads", "2", "--seed", "8"])
            .status
            .success()
    );
    assert_ne!(metrics(&c), ma);
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, resumed) = (tmp.path().join("s"), tmp.path().join("r"));
    assert!(smoke(&straight, &["--epochs", "3"]).status.success());
    assert!(smoke(&resumed, &["--epochs", "1"]).status.success());
    succeeds(
        plasticity()
            .args(["train", "--resume", "--epochs", "3", "--out"])
            .arg(&resumed),
    );
    assert_eq!(metrics(&straight), metrics(&resumed));
    // Weights, training particles and the warm-evaluation particles: all bit-identical.
    let w1 = std::fs::read(straight.join("run_state.safetensors")).unwrap();
    let w2 = std::fs::read(resumed.join("run_state.safetensors")).unwrap();
    let (t1, t2) = (
        safetensors::SafeTensors::deserialize(&w1).unwrap(),
        safetensors::SafeTensors::deserialize(&w2).unwrap(),
    );
    let mut names = t1.names();
    names.sort();
    assert!(
        names.contains(&"val_particles.s1") && names.contains(&"particles.s2"),
        "{names:?}"
    );
    assert_eq!(names.len(), t2.names().len());
    for name in names {
        assert_eq!(
            t1.tensor(name).unwrap().data(),
            t2.tensor(name).unwrap().data(),
            "resumed {name} must be bit-identical"
        );
    }
    // Starting over on top of a run needs --force.
    fails_with(
        plasticity()
            .args(["train", "--limit", "100", "--out"])
            .arg(&straight),
        "already holds a run",
    );
}

#[test]
fn a_time_limit_stops_between_epochs_and_resume_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, limited) = (tmp.path().join("s"), tmp.path().join("l"));
    assert!(smoke(&straight, &["--epochs", "3"]).status.success());
    // With no time at all, the first epoch runs (nothing measured yet) and no other.
    let out = smoke(&limited, &["--epochs", "3", "--time-limit", "0"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped at the time limit after epoch 1 of 3"),
        "{stdout}"
    );
    assert_eq!(metrics(&limited).len(), 1);
    succeeds(
        plasticity()
            .args(["train", "--resume", "--out"])
            .arg(&limited),
    );
    assert_eq!(metrics(&limited), metrics(&straight));
    fails_with(
        plasticity()
            .args(["train", "--resume", "--time-limit=-1", "--out"])
            .arg(&limited),
        "--time-limit -1",
    );
}

#[test]
fn eval_every_skips_scoring_but_not_training() {
    let tmp = tempfile::tempdir().unwrap();
    let (every, second) = (tmp.path().join("e"), tmp.path().join("s"));
    let config = tmp.path().join("every-2.toml");
    // Saving every second epoch (and after the last) changes nothing but when;
    // with keep_checkpoints each saved epoch's parameters stay in epochs/epoch-N.
    std::fs::write(
        &config,
        "eval_every = 2\ncheckpoint_every = 2\nkeep_checkpoints = true\n",
    )
    .unwrap();
    assert!(smoke(&every, &["--epochs", "3"]).status.success());
    let config_args = ["--epochs", "3", "--config", config.to_str().unwrap()];
    assert!(smoke(&second, &config_args).status.success());
    let (e, s) = (metrics(&every), metrics(&second));
    for k in 0..3 {
        for key in ["train_error", "train_cost", "free_phase_residual"] {
            assert_eq!(e[k][key], s[k][key], "epoch {}: {key}", k + 1);
        }
    }
    // Epoch 1 unscored; epoch 2 (every second) and 3 (the last) scored from rest as usual.
    for key in ["val_error", "test_error", "val_cost", "val_error_warm"] {
        assert!(s[0][key].is_null(), "{key}: {:?}", s[0]);
    }
    for k in [1, 2] {
        assert_eq!(e[k]["val_error"], s[k]["val_error"]);
        assert_eq!(e[k]["test_error"], s[k]["test_error"]);
        assert!(s[k]["val_error_warm"].is_f64());
    }
    assert!(second.join("learning_curve.png").is_file());
    let kept = second.join("epochs");
    assert!(!kept.join("epoch-1").exists());
    assert!(kept.join("epoch-2/config.toml").is_file());
    assert_eq!(
        std::fs::read(kept.join("epoch-3/checkpoint.safetensors")).unwrap(),
        std::fs::read(second.join("checkpoint.safetensors")).unwrap()
    );
    let eval = succeeds(
        plasticity()
            .args(["eval", "--split", "val", "--run"])
            .arg(kept.join("epoch-2")),
    );
    let scored: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(scored["epoch"], 2, "epoch 2's parameters");
    std::fs::write(&config, "eval_every = 0\n").unwrap();
    fails_with(
        plasticity().args(["train", "--config", config.to_str().unwrap()]),
        "eval_every must be at least 1",
    );
}

#[test]
fn pack_carries_a_run_at_8_bits_and_resume_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    assert!(smoke(&run, &["--epochs", "2"]).status.success());
    let state = run.join("run_state.safetensors");
    let packed = tmp.path().join("packed.safetensors");
    succeeds(
        plasticity()
            .args(["pack", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(&packed),
    );
    let (full, compressed) = (
        std::fs::read(&state).unwrap(),
        std::fs::read(&packed).unwrap(),
    );
    let small = zstd::stream::decode_all(compressed.as_slice()).unwrap();
    assert!(compressed.len() < small.len());
    let (f, p) = (
        safetensors::SafeTensors::deserialize(&full).unwrap(),
        safetensors::SafeTensors::deserialize(&small).unwrap(),
    );
    // The particles shrink to a quarter (less a header's worth of range metadata).
    let particle_bytes: usize = f
        .tensors()
        .iter()
        .filter(|(name, _)| name.contains("particles"))
        .map(|(_, t)| t.data().len())
        .sum();
    assert!(particle_bytes > 0);
    assert!(full.len() - small.len() + 4096 >= particle_bytes * 3 / 4);
    for name in f.names() {
        let (a, b) = (f.tensor(name).unwrap(), p.tensor(name).unwrap());
        if name.contains("particles") {
            assert_eq!(b.dtype(), safetensors::Dtype::U8, "{name}");
            let (rows, cols) = (a.shape()[0], a.shape()[1]);
            assert_eq!(b.shape(), [cols, rows], "{name} is stored unit-major");
        } else {
            assert_eq!(a.data(), b.data(), "{name} must stay exact");
        }
    }
    // Resumed from the packed state, the run goes on, keeps its history, and
    // its next epoch is within 2 of 300 training errors of the unbroken run's.
    let straight = tmp.path().join("s");
    assert!(smoke(&straight, &["--epochs", "3"]).status.success());
    std::fs::copy(&packed, &state).unwrap();
    succeeds(
        plasticity()
            .args(["train", "--resume", "--epochs", "3", "--out"])
            .arg(&run),
    );
    let (m, s) = (metrics(&run), metrics(&straight));
    assert_eq!(m.len(), 3);
    assert_eq!(m[..2], s[..2]);
    let gap = (m[2]["train_error"].as_f64().unwrap() - s[2]["train_error"].as_f64().unwrap()).abs();
    assert!(gap <= 2.0 / 300.0 + 1e-12, "{:?} vs {:?}", m[2], s[2]);
    fails_with(
        plasticity()
            .args(["pack", "--out"])
            .arg(&packed)
            .arg("--run")
            .arg(tmp.path().join("none")),
        "cannot read checkpoint",
    );
}

#[test]
fn eval_scores_a_checkpoint_as_training_did() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    succeeds(
        plasticity()
            .args(["train", "--limit", "300", "--epochs", "1", "--out"])
            .arg(&run),
    );
    let trained = &metrics(&run)[0];
    for (split, key) in [("val", "val_error"), ("test", "test_error")] {
        let out = plasticity()
            .args(["eval", "--split", split, "--run"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["examples"], 10000);
        assert_eq!(v["epoch"], 1);
        assert_eq!(
            v["error"], trained[key],
            "eval of {split} must match training's"
        );
    }
    // --free-steps: the run's own count scores as training did; another is reported.
    for steps in [20, 60] {
        let out = plasticity()
            .args([
                "eval",
                "--split",
                "val",
                "--free-steps",
                &steps.to_string(),
                "--run",
            ])
            .arg(&run)
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["free_steps"], steps);
        if steps == 20 {
            assert_eq!(v["error"], trained["val_error"]);
        }
    }
    // `mistakes` lists exactly the validation digits that scoring counted wrong.
    let listed = tmp.path().join("mistakes");
    let out = succeeds(
        plasticity()
            .args(["mistakes", "--split", "val", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(&listed),
    );
    let wrong = (trained["val_error"].as_f64().unwrap() * 10000.0).round() as usize;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{wrong} of 10000 val examples wrong")),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(listed.join("mistakes.csv")).unwrap();
    assert_eq!(csv.lines().count(), wrong + 1);
    assert!(listed.join("mistakes.png").exists());
    // A backprop run has no nudge to ask about.
    let bp = tmp.path().join("bp");
    succeeds(
        plasticity()
            .args(["train", "--preset", "backprop-mnist-1h", "--limit", "300"])
            .args(["--eval-limit", "200", "--epochs", "1", "--out"])
            .arg(&bp),
    );
    fails_with(
        plasticity().args(["mistakes", "--run"]).arg(&bp),
        "holds a Backprop model",
    );
}

/// `plasticity ... | head` ends quietly when the reader goes away, as Unix tools do.
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plasticity"))
        .arg("presets")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn backprop_baseline_trains_through_the_same_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("bp");
    succeeds(
        plasticity()
            .args([
                "train",
                "--preset",
                "backprop-mnist-1h",
                "--limit",
                "2000",
                "--eval-limit",
                "500",
            ])
            .args(["--epochs", "2", "--out"])
            .arg(&run),
    );
    let m = metrics(&run);
    let val: Vec<f64> = m.iter().map(|e| e["val_error"].as_f64().unwrap()).collect();
    // Learning: below chance (90%) and better in the second epoch than the first.
    assert!(val[1] < 0.7 && val[1] < val[0], "{val:?}");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("algorithm = \"backprop\""), "{cfg}");
}

#[test]
fn stdp_writes_its_window_and_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = succeeds(
        plasticity()
            .args(["stdp", "--experiments", "2", "--seconds", "20", "--out"])
            .arg(tmp.path()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tau+") && text.contains("pairing"), "{text}");
    for f in [
        "window.csv",
        "fits.csv",
        "report.json",
        "stdp_pairing.png",
        "stdp_random_trains.png",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(tmp.path().join("window.csv")).unwrap();
    assert!(csv.starts_with("protocol,model,dt_ms,dw,sem,n"));
    // 101 pairing points and 50 random-train bins for each of the three models.
    assert_eq!(csv.lines().count(), 1 + 3 * (101 + 50));
}

#[test]
fn compare_runs_each_scheme_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    succeeds(
        plasticity()
            .args([
                "compare",
                "--limit",
                "200",
                "--eval-limit",
                "100",
                "--epochs",
                "2",
            ])
            .args(["--schemes", "paper,even-odd-tol", "--out"])
            .arg(tmp.path()),
    );
    let csv = std::fs::read_to_string(tmp.path().join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    assert!(csv.contains("\neven-odd-tol,2,"));
    for f in [
        "error_vs_epoch.png",
        "error_vs_seconds.png",
        "paper/metrics.jsonl",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    fails_with(
        plasticity().args(["compare", "--schemes", "nope"]),
        "unknown scheme `nope`",
    );
}

#[test]
fn gradcheck_early_and_gdu_run_on_a_small_trained_net() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    plasticity::data::write_synthetic(&data, 120, 30, 28, 2);
    let cfg = tmp.path().join("small.toml");
    std::fs::write(&cfg, "layers = [784, 12, 10]\n").unwrap();
    let run = tmp.path().join("run");
    succeeds(
        plasticity()
            .args(["train", "--epochs", "1", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    for (cmd, file) in [
        ("gradcheck", "gradcheck.csv"),
        ("early", "early_inference.csv"),
        ("gdu", "gdu_units.png"),
    ] {
        let dir = tmp.path().join(cmd);
        let out = plasticity()
            .args([cmd, "--examples", "2", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd}: {stderr}");
        assert!(stderr.contains("examples used"), "{stderr}");
        assert!(dir.join(file).is_file(), "{cmd}: {file} missing");
    }
}

#[test]
fn presets_and_help() {
    let out = plasticity().arg("presets").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for p in [
        "eqprop-mnist-1h",
        "eqprop-mnist-2h",
        "eqprop-mnist-3h",
        "backprop-mnist-1h",
        "backprop-mnist-2h",
    ] {
        assert!(text.contains(p));
    }
    let help = plasticity().args(["train", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--resume"));
}

#[test]
fn bad_presets_configs_and_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    fails_with(
        plasticity().args(["train", "--preset", "nope"]),
        "unknown preset `nope`",
    );
    let cfg = tmp.path().join("c.toml");
    for (text, needle) in [
        ("betta = 1.0\n", "unknown config key `betta`"),
        ("epochs = \"ten\"\n", "`epochs`"),
        ("epochs = [\n", "not valid TOML"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = plasticity();
        cmd.args(["train", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out);
        fails_with(&mut cmd, needle);
    }
    fails_with(
        plasticity()
            .args(["train", "--config"])
            .arg(tmp.path().join("missing.toml")),
        "cannot read config file",
    );
    // Without the `cuda` feature the build says so; with it, a machine without
    // a GPU names what is missing (where a GPU is present, this case is skipped).
    let no_gpu = if cfg!(feature = "cuda") {
        "was not found"
    } else {
        "no GPU support"
    };
    let gpu_here = cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidia0").exists();
    if !gpu_here {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let out = out.to_str().unwrap();
        fails_with(
            plasticity().args(["train", "--device", "cuda", "--out", out]),
            no_gpu,
        );
        fails_with(plasticity().args(["bench", "--device", "cuda"]), no_gpu);
    }
    let out = plasticity()
        .args(["train", "--device", "tpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unknown device `tpu`; use cpu or cuda"));
}

#[test]
fn bad_data_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("o");
    let train = |d: &Path| {
        let mut c = plasticity();
        c.args(["train", "--epochs", "1", "--data"])
            .arg(d)
            .arg("--out")
            .arg(&out);
        c
    };
    fails_with(&mut train(&tmp.path().join("nowhere")), "does not exist");
    plasticity::data::write_synthetic(&data, 120, 30, 28, 1);
    // A working synthetic directory trains.
    let ok = train(&data).arg("--force").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::remove_file(data.join("t10k-labels-idx1-ubyte")).unwrap();
    fails_with(
        &mut train(&data),
        "t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz) not found",
    );
    plasticity::data::write_synthetic(&data, 120, 30, 28, 1);
    // Truncated image file.
    let path = data.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    fails_with(&mut train(&data), "truncated");
    // Wrong magic number.
    let mut bad = bytes.clone();
    bad[2] = 0x0b;
    std::fs::write(&path, &bad).unwrap();
    fails_with(&mut train(&data), "magic");
    // A corrupt gzip file.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(
        data.join("train-images-idx3-ubyte.gz"),
        [0x1f, 0x8b, 8, 0, 1, 2, 3],
    )
    .unwrap();
    fails_with(&mut train(&data), "corrupt");
    // A checksum mismatch.
    std::fs::remove_file(data.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(
        data.join("SHA256SUMS"),
        format!("{}  train-images-idx3-ubyte\n", "0".repeat(64)),
    )
    .unwrap();
    fails_with(&mut train(&data), "fails its checksum");
    std::fs::remove_file(data.join("SHA256SUMS")).unwrap();
    // Image/label count mismatch.
    std::fs::write(
        data.join("train-labels-idx1-ubyte"),
        plasticity::data::idx::encode(&[119], &[0; 119]),
    )
    .unwrap();
    fails_with(&mut train(&data), "120 images but 119 labels");
    // Images of another size than the input layer.
    plasticity::data::write_synthetic(&data, 120, 30, 10, 1);
    fails_with(&mut train(&data), "100 pixels per image");
}

#[test]
fn unwritable_output_and_foreign_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        plasticity()
            .args(["train", "--limit", "100", "--out"])
            .arg(file.join("run")),
        "cannot write to run directory",
    );
    // A checkpoint from a 784-500-10 net, read as a 784-300-10 net.
    let run = tmp.path().join("run");
    assert!(smoke(&run, &["--epochs", "1"]).status.success());
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    std::fs::write(
        run.join("config.toml"),
        cfg.replace("784,\n    500,", "784,\n    300,")
            .replace("[784, 500, 10]", "[784, 300, 10]"),
    )
    .unwrap();
    fails_with(
        plasticity().args(["eval", "--run"]).arg(&run),
        "another architecture",
    );
    fails_with(
        plasticity().args(["train", "--resume", "--out"]).arg(&run),
        "another architecture",
    );
    fails_with(
        plasticity().args(["eval", "--run"]).arg(tmp.path()),
        "run directory made by `plasticity train`",
    );
    fails_with(
        plasticity().args(["train", "--resume"]),
        "--resume needs --out",
    );
}

#[test]
fn divergence_stops_with_epoch_and_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "learning_rates = [1e38, 1e38]\nbeta = 1e-3\n").unwrap();
    let mut cmd = plasticity();
    cmd.args(["train", "--limit", "200", "--eval-limit", "100", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("o"));
    fails_with(&mut cmd, "training diverged in epoch 1");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("layer W") || stderr.contains("layer b"),
        "{stderr}"
    );
}

#[test]
fn rl_writes_each_run_and_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rl");
    succeeds(
        plasticity()
            .args([
                "rl",
                "--method",
                "ep,backprop",
                "--seed",
                "2",
                "--episodes",
                "4",
            ])
            .arg("--out")
            .arg(&out),
    );
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.contains("\nep,2,4,never,") && csv.contains("\nbackprop,2,4,never,"),
        "{csv}"
    );
    assert!(out.join("returns.png").exists());
    for run in ["ep-seed2", "backprop-seed2"] {
        let lines = std::fs::read_to_string(out.join(run).join("episodes.jsonl")).unwrap();
        let eps: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(eps.len(), 4);
        assert!(eps.iter().all(|e| e["return"].as_f64().unwrap() >= 1.0));
        assert!(out.join(run).join("returns.png").exists());
        let cfg = std::fs::read_to_string(out.join(run).join("config.toml")).unwrap();
        assert!(cfg.contains("seed = 2") && cfg.contains("[agent]"), "{cfg}");
    }
}

#[test]
fn rl_bad_input_is_one_plain_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rl");
    fails_with(
        plasticity()
            .args(["rl", "--env", "pendulum", "--episodes", "1"])
            .arg("--out")
            .arg(&out),
        "unknown environment",
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "gama = 0.9\n").unwrap();
    fails_with(
        plasticity()
            .args(["rl", "--episodes", "1", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out),
        "gama",
    );
    std::fs::write(&cfg, "hidden = []\n").unwrap();
    fails_with(
        plasticity()
            .args(["rl", "--episodes", "1", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out),
        "hidden",
    );
}

#[test]
fn the_exact_gradient_learner_trains_and_refuses_the_bandit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rbp.toml");
    std::fs::write(&cfg, "gradient = \"recurrent-backprop\"\nepochs = 1\n").unwrap();
    let out = smoke(
        &dir.path().join("rbp"),
        &["--config", cfg.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = metrics(&dir.path().join("rbp"));
    assert_eq!(m.len(), 1);
    assert!(m[0]["val_error"].as_f64().unwrap() < 0.9);
    std::fs::write(
        &cfg,
        "preset = \"eqprop-mnist-bandit\"\ngradient = \"recurrent-backprop\"\n",
    )
    .unwrap();
    fails_with(
        plasticity()
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.path().join("b")),
        "recurrent-backprop",
    );
}

/// bench on a sliver of an epoch, twice: the epoch rows are the faster
/// repeat's, and the note lists both totals.
#[test]
fn bench_reports_the_fastest_of_its_repeated_epochs() {
    let out = succeeds(plasticity().args([
        "bench",
        "--no-kernels",
        "--examples",
        "40",
        "--repeat",
        "2",
        "--threads",
        "1",
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let total = rows
        .iter()
        .find(|r| r["name"].as_str().unwrap().ends_with("epoch: total"))
        .expect("an epoch total row");
    let note = total["note"].as_str().unwrap();
    let listed = note
        .split("fastest of 2 epochs (totals ")
        .nth(1)
        .and_then(|rest| rest.split(" s)").next())
        .unwrap_or_else(|| panic!("no totals in {note:?}"));
    let totals: Vec<f64> = listed.split(", ").map(|t| t.parse().unwrap()).collect();
    assert_eq!(totals.len(), 2, "{note}");
    let fastest = totals.iter().copied().fold(f64::INFINITY, f64::min);
    let seconds = total["seconds"].as_f64().unwrap();
    // The note rounds to milliseconds.
    assert!((seconds - fastest).abs() <= 6e-4, "{seconds} vs {totals:?}");
}
