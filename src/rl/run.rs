//! Reinforcement-learning runs on disk. One run (a method and a seed) writes
//! `config.toml` (everything that made it), `episodes.jsonl` (a line per
//! episode) and `returns.png`; a sweep over methods and seeds adds
//! `summary.csv` and one plot of every run's 100-episode mean return.

use super::actor_critic::{self, Episode, Method, Settings};
use crate::error::{Error, Result};
use crate::plot::{self, PALETTE, Series};
use crate::train::checkpoint::write_atomic;
use std::path::{Path, PathBuf};

/// CartPole-v1's bar: a mean return of 475 over 100 consecutive episodes.
pub const GOAL: f32 = 475.0;

/// Everything that determines a run's numbers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub env: String,
    pub method: Method,
    pub seed: u64,
    pub episodes: usize,
    pub agent: Settings,
}

/// What a run achieved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub method: Method,
    pub seed: u64,
    pub episodes: usize,
    /// First episode whose last 100 returns average >= 475.
    pub solved_at: Option<usize>,
    pub best_mean100: f32,
    /// The lowest 100-episode mean after `solved_at` (how well it stays solved).
    pub worst_mean100_after: Option<f32>,
    pub final_mean100: f32,
    pub env_steps: usize,
    pub seconds: f64,
    /// (episode, mean of the last 100 returns) for every episode: the sweep's curve.
    #[serde(skip)]
    pub mean100: Vec<(f64, f64)>,
}

/// The agent's settings from a TOML file of its keys (missing keys keep
/// their defaults).
pub fn settings_from(path: Option<&Path>) -> Result<Settings> {
    let Some(path) = path else {
        return Ok(Settings::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    let mut table = toml::Table::try_from(Settings::default()).expect("settings serialize");
    let given: toml::Table = toml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{}: not valid TOML: {}",
            path.display(),
            e.message().trim()
        ))
    })?;
    for (k, v) in given {
        table.insert(k, v);
    }
    toml::Value::Table(table)
        .try_into::<Settings>()
        .map_err(|e| {
            Error::Config(format!(
                "{}: {} (keys are those of a run's [agent] table in config.toml)",
                path.display(),
                e.message().trim()
            ))
        })
}

/// Trains one agent into `out` and returns its summary.
pub fn run(cfg: &RunConfig, out: &Path, on_episode: impl FnMut(&Episode)) -> Result<Summary> {
    if cfg.env != "cartpole" {
        return Err(Error::Config(format!(
            "unknown environment `{}`; the one there is: cartpole",
            cfg.env
        )));
    }
    cfg.agent.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
    let toml = toml::to_string(cfg).expect("config serializes");
    write_atomic(&out.join("config.toml"), toml.as_bytes())?;
    let start = std::time::Instant::now();
    let log = actor_critic::train(&cfg.agent, cfg.method, cfg.seed, cfg.episodes, on_episode)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut lines = String::new();
    for e in &log {
        lines += &serde_json::to_string(e).expect("episode serializes");
        lines.push('\n');
    }
    write_atomic(&out.join("episodes.jsonl"), lines.as_bytes())?;
    let name = format!("{} seed {}", cfg.method.name(), cfg.seed);
    let mean100: Vec<(f64, f64)> = log
        .iter()
        .map(|e| (e.episode as f64, e.mean100 as f64))
        .collect();
    plot::linear_chart(
        &out.join("returns.png"),
        &format!("CartPole-v1, {name}"),
        "episode",
        "return",
        &[
            Series {
                name: "return",
                points: log
                    .iter()
                    .map(|e| (e.episode as f64, e.ret as f64))
                    .collect(),
                color: PALETTE[0],
            },
            Series {
                name: "mean of last 100",
                points: mean100.clone(),
                color: PALETTE[1],
            },
        ],
    )?;
    let solved_at = actor_critic::solved_at(&log, GOAL);
    Ok(Summary {
        method: cfg.method,
        seed: cfg.seed,
        episodes: log.len(),
        solved_at,
        worst_mean100_after: solved_at.map(|s| {
            log[s - 1..]
                .iter()
                .map(|e| e.mean100)
                .fold(f32::INFINITY, f32::min)
        }),
        best_mean100: log.iter().map(|e| e.mean100).fold(0.0, f32::max),
        final_mean100: log.last().map_or(0.0, |e| e.mean100),
        env_steps: log.last().map_or(0, |e| e.steps),
        seconds,
        mean100,
    })
}

/// Where a sweep keeps the run of `method` and `seed`.
pub fn run_dir(out: &Path, method: Method, seed: u64) -> PathBuf {
    out.join(format!("{}-seed{seed}", method.name()))
}

/// Writes `summary.csv` and `returns.png` (every run's 100-episode mean) to
/// `out` for the runs summarised; returns the CSV text.
pub fn write_sweep(out: &Path, summaries: &[Summary]) -> Result<String> {
    let mut csv = String::from(
        "method,seed,episodes,solved_at,best_mean100,worst_mean100_after,final_mean100,env_steps,seconds\n",
    );
    let mut series = Vec::new();
    for s in summaries {
        csv += &format!(
            "{},{},{},{},{:.1},{},{:.1},{},{:.1}\n",
            s.method.name(),
            s.seed,
            s.episodes,
            s.solved_at.map_or("never".into(), |e| e.to_string()),
            s.best_mean100,
            s.worst_mean100_after
                .map_or("".into(), |w| format!("{w:.1}")),
            s.final_mean100,
            s.env_steps,
            s.seconds
        );
        // One legend entry per method: its first run carries the name.
        let first = !summaries[..series.len()]
            .iter()
            .any(|o| o.method == s.method);
        let (label, color) = match s.method {
            Method::EqProp => ("EP actor and critic (each seed)", PALETTE[0]),
            Method::Backprop => ("backprop twin (each seed)", PALETTE[1]),
        };
        series.push(Series {
            name: if first { label } else { "" },
            points: s.mean100.clone(),
            color,
        });
    }
    write_atomic(&out.join("summary.csv"), csv.as_bytes())?;
    plot::linear_chart(
        &out.join("returns.png"),
        "CartPole-v1: mean return of the last 100 episodes",
        "episode",
        "mean return",
        &series,
    )?;
    Ok(csv)
}
