//! One architecture, several relaxation and nudging schemes, the same seed:
//! trained one after the other through the same loop, then one table and two
//! plots (validation error per epoch and per second of wall time).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::plot::{PALETTE, Series, line_chart};
use crate::train::{self, EpochMetrics, Progress, checkpoint::write_atomic};
use std::path::Path;

/// A named set of config overrides (TOML) over the base preset.
pub struct Scheme {
    pub name: &'static str,
    pub overrides: &'static str,
    pub about: &'static str,
}

pub const SCHEMES: [Scheme; 5] = [
    Scheme {
        name: "paper",
        overrides: "",
        about: "synchronous steps, one nudged phase with beta's sign at random (the preset)",
    },
    Scheme {
        name: "symmetric",
        overrides: "nudging = \"symmetric\"",
        about: "synchronous, +beta and -beta nudged phases (Laborieux et al. 2021)",
    },
    Scheme {
        name: "sync-tol",
        overrides: "tolerance = 1e-3",
        about: "synchronous, free phase stopped once no state moves by 1e-3",
    },
    Scheme {
        name: "even-odd",
        overrides: "relaxation = \"even-odd\"\nbeta = 0.5",
        about: "odd then even layers set to their minimiser (Scellier et al. 2023), beta 0.5",
    },
    Scheme {
        name: "even-odd-tol",
        overrides: "relaxation = \"even-odd\"\nbeta = 0.5\ntolerance = 1e-3",
        about: "even-odd, beta 0.5, free phase stopped at tolerance 1e-3",
    },
];

impl Scheme {
    /// `base` with this scheme's overrides.
    pub fn apply(&self, base: &Config) -> Result<Config> {
        let table: toml::Table = toml::from_str(self.overrides).expect("scheme overrides parse");
        base.overlay(&table, &format!("scheme {}", self.name))
    }
}

pub fn scheme(name: &str) -> Result<&'static Scheme> {
    SCHEMES.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCHEMES.iter().map(|s| s.name).collect();
        Error::Config(format!(
            "unknown scheme `{name}`; known schemes: {}",
            names.join(", ")
        ))
    })
}

/// Trains `base` under each scheme into `out/<scheme>` (replacing earlier runs
/// there), then writes `out/compare.csv`, `out/error_vs_epoch.png` and
/// `out/error_vs_seconds.png`. Returns each scheme's metrics.
pub fn run(
    base: &Config,
    schemes: &[&Scheme],
    out: &Path,
    progress: &mut (dyn Progress + Send),
) -> Result<Vec<(String, Vec<EpochMetrics>)>> {
    let mut all = Vec::new();
    for s in schemes {
        let cfg = s.apply(base)?;
        let history = train::train(&cfg, &out.join(s.name), false, true, None, progress)?;
        all.push((s.name.to_string(), history));
    }
    let mut csv =
        String::from("scheme,epoch,train_error,val_error,test_error,seconds,free_steps_mean\n");
    for (name, h) in &all {
        let mut t = 0.0;
        for m in h {
            t += m.epoch_seconds;
            let field = |v: Option<f64>, f: fn(f64) -> String| v.map_or(String::new(), f);
            let steps = field(m.free_steps_mean, |s| format!("{s:.2}"));
            let (val, test) = (
                field(m.val_error, |e| e.to_string()),
                field(m.test_error, |e| e.to_string()),
            );
            csv += &format!(
                "{name},{},{},{val},{test},{t:.3},{steps}\n",
                m.epoch, m.train_error
            );
        }
    }
    write_atomic(&out.join("compare.csv"), csv.as_bytes())?;
    let series = |by_time: bool| -> Vec<Series<'_>> {
        all.iter()
            .zip(PALETTE)
            .map(|((name, h), color)| {
                let mut t = 0.0;
                let points = h
                    .iter()
                    .filter_map(|m| {
                        t += m.epoch_seconds;
                        Some((if by_time { t } else { m.epoch as f64 }, m.val_error?))
                    })
                    .collect();
                Series {
                    name,
                    points,
                    color,
                }
            })
            .collect()
    };
    let title = format!("{}: validation error (from rest) by scheme", base.preset);
    line_chart(
        &out.join("error_vs_epoch.png"),
        &title,
        "epoch",
        "validation error (log scale)",
        &series(false),
    )?;
    line_chart(
        &out.join("error_vs_seconds.png"),
        &title,
        "wall-clock seconds (training + evaluation)",
        "validation error (log scale)",
        &series(true),
    )?;
    Ok(all)
}
