//! The `plasticity` command line: parses arguments, draws progress, prints.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plasticity::config::{self, Config};
use plasticity::train::{self, EpochMetrics, Progress};
use plasticity::{Error, Result, bench, generative};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "plasticity",
    version,
    about = "Biologically plausible deep learning: Equilibrium Propagation and friends, on real data",
    long_about = "Biologically plausible deep learning: Equilibrium Propagation (Scellier & Bengio 2017) \
                  on permutation-invariant MNIST, reproducing the paper.\n\n\
                  With no subcommand, trains the default preset (eqprop-mnist-1h) into runs/eqprop-mnist-1h.\n\n\
                  Examples:\n  \
                  plasticity train --preset eqprop-mnist-2h --out runs/2h\n  \
                  plasticity train --resume --out runs/2h\n  \
                  plasticity eval --run runs/2h --split test\n  \
                  plasticity bench --preset eqprop-mnist-1h"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes config.toml, metrics.jsonl, checkpoints and a learning curve to --out.
    Train(TrainArgs),
    /// Evaluate a run's checkpoint on one split; prints one JSON object (for EP also,
    /// per hidden layer k on the split's first 1,000 examples, hk_inside: the share of
    /// states strictly between the clips, and hk_stuck: of units at one clip for all).
    Eval {
        /// Run directory made by `plasticity train`.
        #[arg(long)]
        run: PathBuf,
        /// Which split to score.
        #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
        split: String,
        /// Worker threads (default: the run's).
        #[arg(long)]
        threads: Option<usize>,
        /// Free-phase steps from rest (default: the run's free_steps), e.g. to see
        /// whether a net trained from persistent particles needs more.
        #[arg(long)]
        free_steps: Option<usize>,
    },
    /// The examples of a split that a trained EP run gets wrong (from rest), and whether
    /// its nudge can move them at all (if not, EP's update for them is exactly zero):
    /// a table, mistakes.csv and mistakes.png (the digits, labelled).
    Mistakes {
        /// Run directory of an EP run.
        #[arg(long)]
        run: PathBuf,
        #[arg(long, default_value = "train", value_parser = ["train", "val", "test"])]
        split: String,
        /// Where to write (default: the run directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Worker threads (default: the run's).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Train one preset under several relaxation/nudging schemes with the same seed;
    /// writes a CSV and plots of validation error per epoch and per second.
    Compare {
        #[command(flatten)]
        train: TrainArgs,
        /// Schemes to run, comma-separated: paper, symmetric, sync-tol, even-odd, even-odd-tol.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "paper,symmetric,sync-tol,even-odd,even-odd-tol"
        )]
        schemes: Vec<String>,
    },
    /// EP's update against the exact gradient (recurrent backprop) on MNIST examples,
    /// for beta from 1 to 0.001, one-sided and symmetric, f64 and f32: table, CSV, PNGs.
    Gradcheck {
        /// Preset whose architecture (and fresh Glorot weights) to measure.
        #[arg(long, default_value = "eqprop-mnist-1h")]
        preset: String,
        /// A run directory whose trained weights to measure too.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Training examples averaged over.
        #[arg(long, default_value_t = 8)]
        examples: usize,
        #[arg(long, default_value = "results/gradcheck")]
        out: PathBuf,
    },
    /// Early inference (Bengio & Fischer 2015): after t nudged steps, the change of each
    /// layer against -dC/ds of that layer by backprop at the fixed point; CSV and PNG.
    Early {
        /// Preset for fresh weights (ignored with --run).
        #[arg(long, default_value = "eqprop-mnist-2h")]
        preset: String,
        /// A run directory whose trained weights to use.
        #[arg(long)]
        run: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        examples: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        beta: f64,
        #[arg(long, default_value = "results/early-inference")]
        out: PathBuf,
    },
    /// Step by step, EP's nudged updates against BPTT's (Ernoult et al. 2019):
    /// per layer, cosine of weight and neural updates per step, and unit traces.
    Gdu {
        /// Preset for fresh weights (ignored with --run).
        #[arg(long, default_value = "eqprop-mnist-1h")]
        preset: String,
        /// A run directory whose trained weights to use.
        #[arg(long)]
        run: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        examples: usize,
        #[arg(long, default_value_t = 12)]
        steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        beta: f64,
        #[arg(long, default_value = "results/gdu")]
        out: PathBuf,
    },
    /// Write a run's state with its persistent particles coded at 8 bits and the whole
    /// zstd-compressed (the 3h net's 423 MB: 26 MB; parameters and metrics exact), to carry
    /// a run to a machine that cannot take the whole state: put it there as
    /// DIR/run_state.safetensors and `train --resume`.
    /// The resumed run is then close to, not bit-identical with, an unbroken one: each
    /// particle moves by at most 1/510 of its tensor's range before relaxing again.
    Pack {
        /// Run directory made by `plasticity train`.
        #[arg(long)]
        run: PathBuf,
        /// File to write (zstd-compressed safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Redraw runs' learning_curve.png (and a generative run's parzen_curve.png) from their metrics.jsonl.
    /// With --out: overlays several runs (test error and, for bandits, mean reward per
    /// epoch) into OUT.png and OUT_reward.png and prints their last epochs as a table.
    Plot {
        #[arg(long, required = true)]
        run: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generative model: ancestral samples, the same after the paper's refinement,
    /// and refinement chains, as PNG grids.
    Sample {
        /// Run directory of a generative model (e.g. results/generative-mnist-2h).
        #[arg(long)]
        run: PathBuf,
        /// Where to write (default: the run directory).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[command(flatten)]
        sampler: SamplerArgs,
    },
    /// Generative model: mean log p(x, h) over test digits per INFERENCE iteration,
    /// for each (delta, alpha); writes inference.png, .csv and .json.
    Infer {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// delta:alpha pairs, comma-separated (the paper trains with 0.1:0.001 and
        /// generates with 0.1:0.3).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.1:0.001,0.1:0.3,0.02:0.001"
        )]
        settings: Vec<String>,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Test digits averaged over.
        #[arg(long, default_value_t = 10000)]
        count: usize,
        #[arg(long, default_value_t = config::default_threads())]
        threads: usize,
    },
    /// Generative model: Parzen-window log-likelihood of the test set under
    /// ancestral and refined samples (window chosen on validation), the Frechet
    /// distance on an EP classifier's features, and a nearest-neighbour check.
    Parzen {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// EP run whose trained network supplies the features.
        #[arg(long, default_value = "results/eqprop-mnist-1h")]
        classifier: PathBuf,
        #[arg(long, default_value_t = 10000)]
        count: usize,
        #[command(flatten)]
        sampler: SamplerArgs,
    },
    /// Generative model: fill in missing pixels of test digits by the model's
    /// dynamics; error on the missing pixels against mean fill and a feed-forward
    /// pass, and an EP classifier's accuracy on the results.
    Inpaint {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// bottom-half, left-half, random-50 or random-80 (may repeat, comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "bottom-half,left-half,random-50,random-80"
        )]
        mask: Vec<String>,
        #[arg(long, default_value = "results/eqprop-mnist-1h")]
        classifier: PathBuf,
        /// Encode/decode steps (each runs INFERENCE).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// alpha of the INFERENCE in each step (the paper's training value: 0.001;
        /// N and delta are the run's).
        #[arg(long, default_value_t = 0.001)]
        alpha: f32,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Std of the noise in each hidden update (0: deterministic), which makes the
        /// steps a Markov chain (the paper's noisy inference).
        #[arg(long, default_value_t = 0.0)]
        noise: f32,
        /// Report the running mean of the chain's images (an estimate of the posterior
        /// mean of the missing pixels) instead of its last image.
        #[arg(long)]
        average: bool,
        #[arg(long, default_value_t = config::default_threads())]
        threads: usize,
    },
    /// Reinforcement learning on CartPole-v1: an actor-critic (PPO) whose actor and
    /// critic are EP networks (no backprop anywhere), or its backprop twin. Runs
    /// every method x seed (in parallel over --threads); each run writes config.toml,
    /// episodes.jsonl (one JSON line per episode) and returns.png to --out/<method>-seed<N>,
    /// and the sweep writes summary.csv and returns.png to --out.
    Rl {
        /// The environment: cartpole (CartPole-v1's dynamics, limits and 500-step cap).
        #[arg(long, default_value = "cartpole")]
        env: String,
        /// How weights learn from the output nudges: ep, backprop, or both (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "ep", value_parser = ["ep", "backprop"])]
        method: Vec<String>,
        /// Seeds, comma-separated (environment, init, actions, minibatches).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        seed: Vec<u64>,
        /// Episodes per run.
        #[arg(long, default_value_t = 1000)]
        episodes: usize,
        /// TOML file overriding the agent's settings (keys of a run's [agent] table).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "runs/rl-cartpole")]
        out: PathBuf,
        /// Runs at once (each is single-threaded and deterministic by seed).
        #[arg(long, default_value_t = config::default_threads())]
        threads: usize,
    },
    /// List the presets and their hyperparameters.
    Presets,
    /// STDP from dW = S_pre dV_post/dt: the Bi & Poo pairing protocol and random
    /// spike trains on three post-synaptic membranes; writes CSV, JSON and PNGs.
    Stdp {
        /// Output directory.
        #[arg(long, default_value = "results/stdp")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Experiments of 60 pairings averaged per point.
        #[arg(long, default_value_t = 50)]
        experiments: usize,
        /// Seconds simulated for the random-train experiment.
        #[arg(long, default_value_t = 400.0)]
        seconds: f64,
    },
    /// Measure the machine's fp32 peak, the hot kernels and a training epoch.
    Bench {
        /// Preset whose epoch to time (may be given several times).
        #[arg(long, default_value = "eqprop-mnist-1h")]
        preset: Vec<String>,
        /// Time only this many training examples and extrapolate (0 = a full epoch;
        /// default: full for 1h, 2000 for deeper presets).
        #[arg(long)]
        examples: Option<usize>,
        #[arg(long, default_value_t = config::default_threads())]
        threads: usize,
        /// Schemes to time for each preset (see `plasticity compare`), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "paper")]
        schemes: Vec<String>,
        /// Print a JSON list instead of a table.
        #[arg(long)]
        json: bool,
        /// Skip the single-kernel measurements.
        #[arg(long)]
        no_kernels: bool,
        /// Time this many successive epochs of each preset and report the fastest
        /// (the note lists them all): other work on the machine only slows a run.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// cuda: time the GPU backend (relaxation steps, launches per step, epochs).
        #[arg(long, value_parser = parse_device, default_value = "cpu")]
        device: config::Device,
    },
}

#[derive(Args, Default)]
struct TrainArgs {
    /// Preset to start from (see `plasticity presets`).
    #[arg(long)]
    preset: Option<String>,
    /// TOML file whose keys override the preset (keys as in a run's config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Epochs to train (with --resume: the new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Seed of the weight init and of beta's signs (and of shuffling, if on).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (results are bit-identical for the same count).
    #[arg(long)]
    threads: Option<usize>,
    /// Where EP runs: cpu, or cuda (an NVIDIA GPU; needs a build with `--features cuda`).
    #[arg(long, value_parser = parse_device)]
    device: Option<config::Device>,
    /// Directory with the four MNIST-format IDX files, raw or .gz (default: the shipped MNIST).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<preset>, or runs/<preset>-2, ... if taken).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// Start over even if --out already holds a run.
    #[arg(long)]
    force: bool,
    /// Use only the first N training examples (smoke runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Use only the first N validation and test examples (smoke runs).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Start no epoch that would end more than this many seconds after the start
    /// (judged by the longest epoch so far); the run stays resumable with --resume.
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<f64>,
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        None => train_cmd(TrainArgs::default()),
        Some(Command::Train(a)) => train_cmd(a),
        Some(Command::Eval {
            run,
            split,
            threads,
            free_steps,
        }) => eval_cmd(&run, &split, threads, free_steps),
        Some(Command::Mistakes {
            run,
            split,
            out,
            threads,
        }) => mistakes_cmd(&run, &split, out.as_deref().unwrap_or(&run), threads),
        Some(Command::Compare { train, schemes }) => compare_cmd(train, &schemes),
        Some(Command::Gradcheck {
            preset,
            run,
            examples,
            out,
        }) => gradcheck_cmd(&preset, run.as_deref(), examples, &out),
        Some(Command::Early {
            preset,
            run,
            examples,
            steps,
            beta,
            out,
        }) => early_cmd(&preset, run.as_deref(), examples, steps, beta, &out),
        Some(Command::Gdu {
            preset,
            run,
            examples,
            steps,
            beta,
            out,
        }) => gdu_cmd(&preset, run.as_deref(), examples, steps, beta, &out),
        Some(Command::Pack { run, out }) => {
            train::checkpoint::pack(&run.join(train::STATE_FILE), &out)
                .map(|bytes| println!("{}: {:.1} MB", out.display(), bytes as f64 / 1e6))
        }
        Some(Command::Plot { run, out: None }) => run.iter().try_for_each(|r| train::replot(r)),
        Some(Command::Plot {
            run,
            out: Some(out),
        }) => train::overlay(&run, &out).map(|table| print!("{table}")),
        Some(Command::Sample {
            run,
            out,
            count,
            sampler,
        }) => in_pool(sampler.threads, || {
            let out = out.unwrap_or_else(|| run.clone());
            let msg = generative::commands::sample_run(
                &run,
                &out,
                &sampler.sampler(),
                count,
                sampler.seed,
            )?;
            println!("{msg}");
            Ok(())
        }),
        Some(Command::Infer {
            run,
            out,
            settings,
            steps,
            count,
            threads,
        }) => in_pool(threads, || {
            let pairs = settings
                .iter()
                .map(|p| parse_pair(p))
                .collect::<Result<Vec<_>>>()?;
            let out = out.unwrap_or_else(|| run.clone());
            print!(
                "{}",
                generative::commands::infer_run(&run, &out, &pairs, steps, count)?
            );
            Ok(())
        }),
        Some(Command::Parzen {
            run,
            out,
            classifier,
            count,
            sampler,
        }) => in_pool(sampler.threads, || {
            let out = out.unwrap_or_else(|| run.clone());
            let (table, _) = generative::commands::parzen_run(
                &run,
                &classifier,
                &out,
                &sampler.sampler(),
                count,
                sampler.seed,
            )?;
            print!("{table}");
            Ok(())
        }),
        Some(Command::Inpaint {
            run,
            out,
            mask,
            classifier,
            steps,
            alpha,
            count,
            seed,
            noise,
            average,
            threads,
        }) => in_pool(threads, || {
            let out = out.unwrap_or_else(|| run.clone());
            let settings = generative::commands::Inpainting {
                top_down: alpha,
                steps,
                count,
                seed,
                noise,
                average,
            };
            for m in &mask {
                let m: generative::impute::Mask = m.parse()?;
                let (table, _) =
                    generative::commands::inpaint_run(&run, &classifier, &out, m, &settings)?;
                print!("{table}");
            }
            Ok(())
        }),
        Some(Command::Presets) => presets_cmd(),
        Some(Command::Rl {
            env,
            method,
            seed,
            episodes,
            config,
            out,
            threads,
        }) => rl_cmd(env, &method, &seed, episodes, config, &out, threads),
        Some(Command::Stdp {
            out,
            seed,
            experiments,
            seconds,
        }) => stdp_cmd(&out, seed, experiments, seconds),
        Some(Command::Bench {
            preset,
            examples,
            threads,
            schemes,
            json,
            no_kernels,
            repeat,
            device,
        }) => match device {
            config::Device::Cpu => bench_cmd(
                &preset, &schemes, examples, repeat, threads, json, no_kernels,
            ),
            config::Device::Cuda => bench_cuda_cmd(&preset, &schemes, examples, repeat, json),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_device(s: &str) -> std::result::Result<config::Device, String> {
    match s {
        "cpu" => Ok(config::Device::Cpu),
        "cuda" => Ok(config::Device::Cuda),
        other => Err(format!("unknown device `{other}`; use cpu or cuda")),
    }
}

fn resolve_config(a: &TrainArgs) -> Result<Config> {
    let mut cfg = match &a.config {
        Some(path) => Config::from_file(path, a.preset.as_deref())?,
        None => config::preset(a.preset.as_deref().unwrap_or(config::PRESETS[0]))?,
    };
    if let Some(v) = a.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = a.batch {
        cfg.batch_size = v;
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = a.threads {
        cfg.threads = v;
    }
    if let Some(v) = &a.data {
        cfg.data = v.display().to_string();
    }
    if let Some(v) = a.limit {
        cfg.limit = v;
    }
    if let Some(v) = a.eval_limit {
        cfg.eval_limit = v;
    }
    if let Some(v) = a.device {
        cfg.device = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let (cfg, out) = if a.resume {
        let out = a.out.clone().ok_or_else(|| {
            Error::Config("--resume needs --out DIR, the run directory to continue".into())
        })?;
        if a.preset.is_some()
            || a.config.is_some()
            || a.batch.is_some()
            || a.seed.is_some()
            || a.data.is_some()
            || a.limit.is_some()
            || a.eval_limit.is_some()
        {
            return Err(Error::Config(
                "with --resume the run's own config.toml is used; only --epochs, --threads and --device may be given".into(),
            ));
        }
        let mut cfg = train::read_run_config(&out)?;
        if let Some(e) = a.epochs {
            cfg.epochs = e;
        }
        if let Some(t) = a.threads {
            cfg.threads = t;
        }
        if let Some(d) = a.device {
            cfg.device = d;
        }
        (cfg, out)
    } else {
        let cfg = resolve_config(&a)?;
        let out = a.out.clone().unwrap_or_else(|| fresh_run_dir(&cfg.preset));
        (cfg, out)
    };
    eprintln!("run directory: {}", out.display());
    let mut bar = Bar::default();
    let time_limit = a
        .time_limit
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                Error::Config(format!(
                    "--time-limit {s}: give a number of seconds, 0 or more"
                ))
            })
        })
        .transpose()?;
    let history = train::train(&cfg, &out, a.resume, a.force, time_limit, &mut bar)?;
    if let Some(m) = history.last() {
        println!(
            "final (epoch {}): train error {}, validation error {}, test error {}",
            m.epoch,
            train::percent(m.train_error),
            train::percent_or_dash(m.val_error),
            train::percent_or_dash(m.test_error)
        );
        if time_limit.is_some() && m.epoch < cfg.epochs {
            println!(
                "stopped at the time limit after epoch {} of {}; continue with \
                 `plasticity train --resume --out {}`",
                m.epoch,
                cfg.epochs,
                out.display()
            );
        }
    }
    Ok(())
}

/// runs/<preset>, or runs/<preset>-2, -3, ... if taken: a default run never
/// overwrites an earlier one.
fn fresh_run_dir(preset: &str) -> PathBuf {
    let base = PathBuf::from("runs");
    (1..)
        .map(|i| match i {
            1 => base.join(preset),
            _ => base.join(format!("{preset}-{i}")),
        })
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// Progress on stderr: a bar per epoch with examples/s and the running error.
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
    epochs: usize,
}

impl Progress for Bar {
    fn start(&mut self, description: &str, first: usize, epochs: usize) {
        self.epochs = epochs;
        eprintln!("{description}");
        if first > epochs {
            eprintln!("nothing to do: all {epochs} epochs are done (raise --epochs to go on)");
        } else if first > 1 {
            eprintln!("resuming at epoch {first} of {epochs}");
        }
    }

    fn epoch_start(&mut self, epoch: usize, examples: usize) {
        let bar = ProgressBar::new(examples as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch:>3}/{}", self.epochs));
        self.bar = Some(bar);
    }

    fn batch_done(&mut self, done: usize, errors: usize) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            if done % 1000 < 100 {
                b.set_message(format!(
                    "train error {}",
                    train::percent(errors as f64 / done.max(1) as f64)
                ));
            }
        }
    }

    fn evaluating(&mut self, split: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("evaluating {split}"));
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let mut warm = match (m.val_error_warm, m.test_error_warm) {
            (Some(v), Some(t)) => format!(
                "  (warm: val {} test {})",
                train::percent(v),
                train::percent(t)
            ),
            _ => String::new(),
        };
        if let Some(r) = m.mean_reward {
            warm += &format!("  reward {r:.4}");
        }
        println!(
            "epoch {:>3}/{}  train {:>7}  val {:>7}  test {:>7}{warm}  cost {:.4}  {:.1} s  ({:.0} ex/s, {:.1} GFLOP/s)",
            m.epoch,
            self.epochs,
            train::percent(m.train_error),
            train::percent_or_dash(m.val_error),
            train::percent_or_dash(m.test_error),
            m.train_cost,
            m.epoch_seconds,
            m.examples_per_second,
            m.train_gflops
        );
    }
}

fn eval_cmd(
    run: &std::path::Path,
    split: &str,
    threads: Option<usize>,
    free_steps: Option<usize>,
) -> Result<()> {
    let e = train::evaluate_run(run, split, threads, free_steps)?;
    let mut out = serde_json::json!({
        "run": run.display().to_string(),
        "split": split,
        "epoch": e.epoch,
        "free_steps": e.free_steps,
        "examples": e.stats.examples,
        "error": e.stats.error_rate(),
        "cost": e.stats.mean_cost(),
    });
    for (name, value) in e.diagnostics {
        out[name] = value.into();
    }
    println!("{out}");
    Ok(())
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`plasticity ... | head`)
/// would panic; the default action ends the process quietly, as Unix tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn mistakes_cmd(
    run: &std::path::Path,
    split: &str,
    out: &std::path::Path,
    threads: Option<usize>,
) -> Result<()> {
    use plasticity::eqprop::mistakes;
    let (cfg, net) = plasticity::eqprop::load_run(run)?;
    if cfg.algorithm != plasticity::config::Algorithm::Eqprop {
        return Err(Error::Config(format!(
            "{} holds a {:?} model; `mistakes` asks whether EP's nudge reaches each digit, \
             so give an EP run such as results/eqprop-mnist-1h",
            run.display(),
            cfg.algorithm
        )));
    }
    let splits = train::load_data(&cfg)?;
    let data = splits.named(split)?;
    let pool = train::thread_pool(threads.unwrap_or(cfg.threads))?;
    let found = pool.install(|| mistakes::mistakes(&cfg, &net, data));
    let unreachable = found.iter().filter(|m| m.unreachable()).count();
    println!(
        "{} of {} {split} examples wrong from rest ({}); {unreachable} of them out of the \
         nudge's reach (beta {}: no state moves, so EP's update for them is exactly zero)",
        found.len(),
        data.len(),
        train::percent(found.len() as f64 / data.len().max(1) as f64),
        cfg.beta
    );
    println!(
        "{:>6} {:>5} {:>9} {:>8} {:>8} {:>8}  outputs",
        "index", "label", "predicted", "s_label", "s_pred", "moved"
    );
    for m in found.iter().take(30) {
        let moved = m.moved[0].max(m.moved[1]);
        let outs: Vec<String> = m.output.iter().map(|o| format!("{o:.2}")).collect();
        println!(
            "{:>6} {:>5} {:>9} {:>8.3} {:>8.3} {:>8.4}  {}",
            m.index,
            m.label,
            m.predicted,
            m.output[m.label as usize],
            m.output[m.predicted],
            moved,
            outs.join(" ")
        );
    }
    if found.len() > 30 {
        println!("... {} more in mistakes.csv", found.len() - 30);
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io("cannot create output directory", out, e))?;
    let csv = mistakes::to_csv(&found);
    plasticity::train::checkpoint::write_atomic(&out.join("mistakes.csv"), csv.as_bytes())?;
    let shown: Vec<&[f32]> = found
        .iter()
        .take(100)
        .map(|m| data.images.row(m.index))
        .collect();
    let labels: Vec<String> = found
        .iter()
        .take(100)
        .map(|m| match m.output.iter().all(|&o| o == 0.0) {
            true => format!("{}>none", m.label),
            false => format!("{}>{}", m.label, m.predicted),
        })
        .collect();
    let mut title = format!(
        "{split} mistakes of {} (label>predicted; none: every output at 0): {} of {}",
        run.display(),
        found.len(),
        data.len()
    );
    if found.len() > shown.len() {
        title += &format!(", first {} shown", shown.len());
    }
    let side = (data.images.cols as f64).sqrt() as usize;
    let png = out.join("mistakes.png");
    plasticity::plot::captioned_image_grid(&png, &title, &shown, &labels, side, 10, 3)?;
    println!(
        "wrote {} and {}",
        out.join("mistakes.csv").display(),
        png.display()
    );
    Ok(())
}

/// How the generative model's samples are drawn (the paper's values by default).
#[derive(Args)]
struct SamplerArgs {
    /// Refinement rounds after the ancestral pass (the paper: 3).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// INFERENCE iterations per round (N).
    #[arg(long, default_value_t = 15)]
    steps: usize,
    /// delta: step along the target-propagation estimate.
    #[arg(long, default_value_t = 0.1)]
    delta: f32,
    /// alpha: top-down pull during refinement (the paper: 0.3).
    #[arg(long, default_value_t = 0.3)]
    alpha: f32,
    /// Gaussian corruption of the image before each round, relative to its RMS
    /// (0: none, as the paper).
    #[arg(long, default_value_t = 0.0)]
    corruption: f32,
    /// Std of the noise added to each hidden update during refinement.
    #[arg(long, default_value_t = 0.0)]
    noise: f32,
    /// The top prior's variance is the codes' variance times this (the paper: 4).
    #[arg(long, default_value_t = 4.0)]
    prior_scale: f32,
    /// Top prior: diagonal (the paper's, from the checkpoint: the codes' mean and
    /// variance summed over the last training epoch), diagonal-fit (the same Gaussian
    /// fitted after training to the inferred codes of 10,000 training images, as the
    /// paper describes it), full (ours: a full-covariance Gaussian fitted to those codes)
    /// or mixture (ours: --components full-covariance Gaussians fitted to them by EM).
    #[arg(long, default_value = "diagonal", value_parser = ["diagonal", "diagonal-fit", "full", "mixture"])]
    prior: String,
    /// Components of the mixture prior.
    #[arg(long, default_value_t = 10)]
    components: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = config::default_threads())]
    threads: usize,
}

impl SamplerArgs {
    fn sampler(&self) -> generative::sample::Sampler {
        generative::sample::Sampler {
            prior: match self.prior.as_str() {
                "diagonal-fit" => generative::sample::PriorKind::DiagonalFit,
                "full" => generative::sample::PriorKind::Full,
                "mixture" => generative::sample::PriorKind::Mixture(self.components.max(1)),
                _ => generative::sample::PriorKind::Diagonal,
            },
            prior_scale: self.prior_scale,
            rounds: self.rounds,
            dynamics: generative::inference::Dynamics {
                steps: self.steps,
                rate: self.delta,
                top_down: self.alpha,
                noise: self.noise,
            },
            corruption: self.corruption,
        }
    }
}

/// "delta:alpha" as two numbers.
fn parse_pair(p: &str) -> Result<(f32, f32)> {
    let bad = || Error::Config(format!("`{p}`: give delta:alpha, e.g. 0.1:0.001"));
    let (a, b) = p.split_once(':').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// Runs `f` on a pool of `threads` workers (the GEMMs split across them).
fn in_pool(threads: usize, f: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    train::thread_pool(threads.max(1))?.install(f)
}

fn stdp_cmd(out: &std::path::Path, seed: u64, experiments: usize, seconds: f64) -> Result<()> {
    use plasticity::spiking::stdp;
    let settings = stdp::Settings {
        experiments,
        random_seconds: seconds,
        ..Default::default()
    };
    eprintln!(
        "simulating {} models, pairing protocol and random trains...",
        stdp::models().len()
    );
    let r = stdp::run(&settings, seed, out)?;
    let pairing: Vec<&stdp::Window> = r
        .windows
        .iter()
        .filter(|w| w.protocol == "pairing")
        .collect();
    println!(
        "pairing protocol: mean weight change per pairing (dV/dt at the pre spike, mV/ms, eta = 1)\n\
         and relative change (per cent of that model's largest |change|)"
    );
    print!("{:>8}", "dt (ms)");
    for (i, _) in pairing.iter().enumerate() {
        print!("  {:>24}", format!("model {}", i + 1));
    }
    let peak: Vec<f64> = pairing
        .iter()
        .map(|w| w.points.iter().map(|p| p.dw.abs()).fold(0.0, f64::max))
        .collect();
    println!();
    for k in 0..pairing[0].points.len() {
        let dt = pairing[0].points[k].dt_ms;
        if dt.abs() > 40.0 && (dt as i64) % 20 != 0 {
            continue;
        }
        print!("{dt:>8.0}");
        for (w, peak) in pairing.iter().zip(&peak) {
            let p = &w.points[k];
            print!(
                "  {:>8.4} ± {:.4} {:>+6.1}%",
                p.dw,
                p.sem,
                100.0 * p.dw / peak
            );
        }
        println!();
    }
    println!(
        "\nfits: dW = A+ exp(-dt/tau+) for dt > 0, A- exp(dt/tau-) for dt < 0 (Bi & Poo: tau+ {} ms, tau- {} ms)",
        stdp::BI_POO_TAU_PLUS,
        stdp::BI_POO_TAU_MINUS
    );
    for (i, m) in stdp::models().iter().enumerate() {
        println!("model {}: {}", i + 1, m.name);
        for w in r.windows.iter().filter(|w| w.model == m.name) {
            let f = &w.fit;
            println!(
                "  {:<14} A+ {:+.4}  tau+ {:6.2} ms   A- {:+.4}  tau- {:6.2} ms",
                w.protocol, f.a_plus, f.tau_plus, f.a_minus, f.tau_minus
            );
        }
    }
    let (spk, rate) = r.spike_vs_rate;
    println!(
        "\nspike rule averaged over Poisson pre spikes: {spk:.4}; rate rule integral of rho_pre dV/dt: {rate:.4}"
    );
    println!(
        "wrote {}/window.csv, fits.csv, report.json, stdp_pairing.png, stdp_random_trains.png",
        out.display()
    );
    Ok(())
}

fn compare_cmd(a: TrainArgs, names: &[String]) -> Result<()> {
    if a.resume || a.device.is_some_and(|d| d != config::Device::Cpu) {
        return Err(Error::Config(
            "compare runs fresh CPU runs: drop --resume and --device".into(),
        ));
    }
    let cfg = resolve_config(&a)?;
    let schemes = names
        .iter()
        .map(|n| plasticity::compare::scheme(n))
        .collect::<Result<Vec<_>>>()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", cfg.preset)));
    eprintln!("comparing {} schemes into {}", schemes.len(), out.display());
    let mut bar = Bar::default();
    let all = plasticity::compare::run(&cfg, &schemes, &out, &mut bar)?;
    println!(
        "\n{:<14} {:>8} {:>8} {:>8} {:>11} {:>10}",
        "scheme", "train", "val", "test", "free steps", "seconds"
    );
    for (name, h) in &all {
        if let Some(m) = h.last() {
            let secs: f64 = h.iter().map(|m| m.epoch_seconds).sum();
            println!(
                "{:<14} {:>8} {:>8} {:>8} {:>11.1} {:>10.1}",
                name,
                train::percent(m.train_error),
                train::percent_or_dash(m.val_error),
                train::percent_or_dash(m.test_error),
                m.free_steps_mean.unwrap_or(f64::NAN),
                secs
            );
        }
    }
    for s in &schemes {
        println!("  {:<12} {}", s.name, s.about);
    }
    println!(
        "wrote {0}/compare.csv, {0}/error_vs_epoch.png, {0}/error_vs_seconds.png",
        out.display()
    );
    Ok(())
}

/// The config and weights a measurement uses: a run's trained weights, or a
/// preset's fresh Glorot weights.
fn weights_for(
    preset: &str,
    run: Option<&std::path::Path>,
) -> Result<(Config, plasticity::eqprop::Network, &'static str)> {
    use plasticity::eqprop::{Network, load_run};
    match run {
        Some(dir) => {
            let (cfg, net) = load_run(dir)?;
            Ok((cfg, net, "trained"))
        }
        None => {
            let cfg = config::preset(preset)?;
            let net = Network::initial(&cfg);
            Ok((cfg, net, "fresh"))
        }
    }
}

fn early_cmd(
    preset: &str,
    run: Option<&std::path::Path>,
    examples: usize,
    steps: usize,
    beta: f64,
    out: &std::path::Path,
) -> Result<()> {
    use plasticity::plot::{PALETTE, Series, linear_chart};
    let (cfg, net, label) = weights_for(preset, run)?;
    let data = train::load_data(&cfg)?.val;
    eprintln!("early inference with {label} weights, beta {beta}...");
    let (cos, usage) =
        plasticity::gradcheck::early(label, &net, &cfg, &data, examples.max(1), steps, beta);
    eprintln!("  {usage}");
    let depth = net.depth();
    print!("{:>4}", "t");
    for k in 1..=depth {
        print!(
            "  {:>9}",
            if k == depth {
                "output".to_string()
            } else {
                format!("layer {k}")
            }
        );
    }
    println!();
    let mut csv = String::from("t,layer,cosine\n");
    for (t, row) in cos.iter().enumerate() {
        print!("{:>4}", t + 1);
        for (k, c) in row.iter().enumerate() {
            print!("  {c:>9.4}");
            csv += &format!("{},{},{}\n", t + 1, k + 1, c);
        }
        println!();
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io("cannot create output directory", out, e))?;
    plasticity::train::checkpoint::write_atomic(&out.join("early_inference.csv"), csv.as_bytes())?;
    let names: Vec<String> = (1..=depth)
        .map(|k| {
            if k == depth {
                "output".into()
            } else {
                format!("hidden layer {k}")
            }
        })
        .collect();
    let series: Vec<Series<'_>> = names
        .iter()
        .enumerate()
        .map(|(k, name)| Series {
            name,
            points: cos
                .iter()
                .enumerate()
                .map(|(t, row)| ((t + 1) as f64, row[k]))
                .collect(),
            color: PALETTE[k % PALETTE.len()],
        })
        .collect();
    linear_chart(
        &out.join("early_inference.png"),
        &format!(
            "state change after t nudged steps vs -dC/ds ({label} {} weights)",
            cfg.preset
        ),
        "nudged steps t",
        "cosine with -dC/ds_k",
        &series,
    )?;
    println!(
        "wrote {0}/early_inference.csv and {0}/early_inference.png",
        out.display()
    );
    Ok(())
}

fn gdu_cmd(
    preset: &str,
    run: Option<&std::path::Path>,
    examples: usize,
    steps: usize,
    beta: f64,
    out: &std::path::Path,
) -> Result<()> {
    let (cfg, net, label) = weights_for(preset, run)?;
    let data = train::load_data(&cfg)?.val;
    eprintln!("EP vs BPTT step by step with {label} weights, beta {beta}...");
    let r = plasticity::gradcheck::gdu(
        label,
        &net,
        &cfg,
        &data,
        examples.max(1),
        steps.max(1),
        beta,
    );
    eprintln!("  {}", r.usage);
    let title = format!("{label} {} weights, beta {beta}", cfg.preset);
    print!("{}", plasticity::gradcheck::write_gdu(&r, &title, out)?);
    println!(
        "wrote {0}/gdu.csv, {0}/gdu_cosine.png and {0}/gdu_units.png",
        out.display()
    );
    Ok(())
}

fn gradcheck_cmd(
    preset: &str,
    run: Option<&std::path::Path>,
    examples: usize,
    out: &std::path::Path,
) -> Result<()> {
    use plasticity::eqprop::Network;
    use plasticity::gradcheck;
    // The run's (or preset's) config; fresh weights of its architecture, and the
    // trained ones when a run is given.
    let (cfg, trained, _) = weights_for(preset, run)?;
    // Validation examples: a trained net fits its training set to a cost of exactly 0.
    let data = train::load_data(&cfg)?.val;
    let n = examples.max(1);
    let mut sets = vec![("fresh", Network::initial(&cfg))];
    if run.is_some() {
        sets.push(("trained", trained));
    }
    let mut rows = Vec::new();
    for (label, net) in &sets {
        eprintln!("measuring {label} weights on {n} examples...");
        let (r, usage) = gradcheck::measure(label, net, &cfg, &data, n);
        eprintln!("  {usage}");
        rows.extend(r);
    }
    gradcheck::write(&rows, out)?;
    let layers = cfg.layers.len() - 1;
    print!(
        "{:<8} {:<10} {:<4} {:>6}",
        "weights", "nudging", "prec", "beta"
    );
    for k in 0..layers {
        print!("   W{k},b{}: cos / |ep|/|grad|", k + 1);
    }
    println!();
    for chunk in rows.chunks(layers) {
        let r = &chunk[0];
        print!(
            "{:<8} {:<10} {:<4} {:>6}",
            r.weights, r.nudging, r.precision, r.beta
        );
        for r in chunk {
            print!("   {:>10.6} / {:>6.3}       ", r.cosine, r.norm_ratio);
        }
        println!();
    }
    println!(
        "wrote {}/gradcheck.csv and gradcheck_<weights>.png",
        out.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn rl_cmd(
    env: String,
    methods: &[String],
    seeds: &[u64],
    episodes: usize,
    config: Option<PathBuf>,
    out: &std::path::Path,
    threads: usize,
) -> Result<()> {
    use plasticity::rl::actor_critic::Method;
    use plasticity::rl::run::{self, RunConfig};
    use rayon::prelude::*;
    let agent = run::settings_from(config.as_deref())?;
    let mut configs = Vec::new();
    for m in methods {
        let method: Method = m.parse()?;
        for &seed in seeds {
            configs.push(RunConfig {
                env: env.clone(),
                method,
                seed,
                episodes,
                agent: agent.clone(),
            });
        }
    }
    let bars = indicatif::MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} eps {per_sec} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
    let summaries = train::thread_pool(threads)?.install(|| {
        configs
            .par_iter()
            .map(|cfg| {
                let bar = bars.add(ProgressBar::new(episodes as u64));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{} seed {}", cfg.method.name(), cfg.seed));
                let dir = run::run_dir(out, cfg.method, cfg.seed);
                let summary = run::run(cfg, &dir, |e| {
                    bar.set_position(e.episode as u64);
                    bar.set_message(format!("return {:>3} mean100 {:.1}", e.ret, e.mean100));
                })?;
                bar.finish();
                Ok(summary)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    print!("{}", run::write_sweep(out, &summaries)?);
    Ok(())
}

fn presets_cmd() -> Result<()> {
    println!(
        "{:<30} {:<22} {:>5} {:>6} {:>5} {:>6} {:>5} learning rates",
        "preset", "layers", "free", "nudged", "beta", "epochs", "batch"
    );
    for name in config::PRESETS {
        let c = config::preset(name)?;
        let layers: Vec<String> = c.layers.iter().map(|n| n.to_string()).collect();
        let ep = |v: String| {
            if c.algorithm == config::Algorithm::Eqprop {
                v
            } else {
                "-".into()
            }
        };
        println!(
            "{:<30} {:<22} {:>5} {:>6} {:>5} {:>6} {:>5} {:?}",
            name,
            layers.join("-"),
            ep(c.free_steps.to_string()),
            ep(c.nudged_steps.to_string()),
            ep(c.beta.to_string()),
            c.epochs,
            c.batch_size,
            c.learning_rates
        );
    }
    println!(
        "\neqprop-*: epsilon 0.5, beta's sign random per mini-batch, persistent particles, Glorot init,\n\
         no shuffling. Validation and test are scored from rest and, as the paper's code does, warm\n\
         (each example's free phase starting from its fixed point of the previous epoch).\n\
         backprop-*: the same layers, hard-sigmoid units, cost and epochs, trained by backprop and SGD.\n\
         generative-*: Bengio et al. (2015): softplus hidden and sigmoid top units, each layer pair a\n\
         denoising auto-encoder (Adam at the rates shown), INFERENCE N=15, delta=0.1, alpha=0.001\n\
         before every update; see `plasticity sample`, `infer`, `parzen` and `inpaint`."
    );
    Ok(())
}

fn bench_cmd(
    presets: &[String],
    schemes: &[String],
    examples: Option<usize>,
    repeat: usize,
    threads: usize,
    json: bool,
    no_kernels: bool,
) -> Result<()> {
    let pool = train::thread_pool(threads)?;
    let rows = pool.install(|| -> Result<Vec<bench::Row>> {
        let one = bench::peak_gflops_alone();
        let peak = bench::peak_gflops();
        let mut rows = vec![bench::Row {
            name: format!("fp32 peak ({threads} cores, FMA chains)"),
            seconds: 0.0,
            gflops: peak,
            fraction_of_peak: 1.0,
            threads,
            note: format!("{one:.1} GFLOP/s on one core alone"),
        }];
        if !no_kernels {
            rows.extend(bench::kernels(one));
        }
        for p in presets {
            let mut base = config::preset(p)?;
            base.threads = threads;
            let splits = train::load_data(&base)?;
            let n = examples.unwrap_or(if p == "eqprop-mnist-1h" { 0 } else { 2000 });
            for name in schemes {
                let cfg = plasticity::compare::scheme(name)?.apply(&base)?;
                let label = if name == "paper" {
                    p.clone()
                } else {
                    format!("{p} [{name}]")
                };
                rows.extend(bench::epoch(&label, &cfg, &splits, n, repeat, peak)?);
            }
        }
        Ok(rows)
    })?;
    print_rows(rows, json);
    Ok(())
}

fn print_rows(rows: Vec<bench::Row>, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        );
        return;
    }
    println!(
        "{:<58} {:>10} {:>9} {:>8} {:>4}  note",
        "what", "seconds", "GFLOP/s", "of peak", "thr"
    );
    for r in rows {
        println!(
            "{:<58} {:>10.4e} {:>9.1} {:>7.1}% {:>4}  {}",
            r.name,
            r.seconds,
            r.gflops,
            100.0 * r.fraction_of_peak,
            r.threads,
            r.note
        );
    }
}

#[cfg(feature = "cuda")]
fn bench_cuda_cmd(
    presets: &[String],
    schemes: &[String],
    examples: Option<usize>,
    repeat: usize,
    json: bool,
) -> Result<()> {
    let rows = plasticity::cuda::bench::run(presets, schemes, examples.unwrap_or(0), repeat)?;
    print_rows(rows, json);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda_cmd(_: &[String], _: &[String], _: Option<usize>, _: usize, _: bool) -> Result<()> {
    Err(Error::Device(
        "--device cuda: this build has no GPU support; rebuild with \
         `cargo build --release --features cuda`"
            .into(),
    ))
}
