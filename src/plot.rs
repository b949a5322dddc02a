//! PNG plots with plotters, using an embedded font (no system fontconfig needed).

use crate::error::{Error, Result};
use crate::train::EpochMetrics;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn ensure_font() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // The font is a known-good TTF compiled into the binary.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One named curve: (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// A line chart with a log-scale y axis (errors as percentages) written to `path` as PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<()> {
    chart(path, title, x_label, y_label, series, Some(percent))
}

/// Labels at 1, 2 and 5 times each power of ten inside [lo, hi] (plotters'
/// own choice leaves the decade that holds most error curves unlabelled).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = m * decade;
            if (lo..=hi).contains(&t) {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A line chart with a log-scale y axis, values printed as they are.
pub fn log_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<()> {
    chart(path, title, x_label, y_label, series, Some(plain))
}

/// Log-axis tick labels as percentages (`train::percent`).
fn percent(v: &f64) -> String {
    crate::train::percent(*v)
}

fn plain(v: &f64) -> String {
    format!("{v:.0e}")
}

/// A line chart with a linear y axis (zero marked) written to `path` as PNG.
pub fn linear_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<()> {
    chart(path, title, x_label, y_label, series, None)
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    log_format: Option<fn(&f64) -> String>,
) -> Result<()> {
    ensure_font();
    let log_y = log_format.is_some();
    let err = |e: String| Error::Checkpoint(format!("cannot draw plot {}: {e}", path.display()));
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite() && (!log_y || *y > 0.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if x0 > x1 {
        return Ok(());
    }
    let (x0, x1) = if x0 == x1 {
        (x0 - 0.5, x1 + 0.5)
    } else {
        (x0, x1)
    };
    let (y0, y1) = if y0 > y1 {
        (1e-4, 1.0)
    } else if log_y {
        (y0 * 0.8, y1 * 1.25)
    } else {
        // Linear axes may be all negative (a log-likelihood): pad by the span.
        let pad = if y1 > y0 { 0.08 * (y1 - y0) } else { 0.5 };
        (y0 - pad, y1 + pad)
    };
    let tmp = path.with_extension("png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70);
        if log_y {
            let mut chart = builder
                .build_cartesian_2d(
                    x0..x1,
                    (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
                )
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .y_label_formatter(&log_format.unwrap_or(percent))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            draw_series(&mut chart, series, |p| p.1 > 0.0, Some(y0)).map_err(err)?;
        } else {
            let mut chart = builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| err(e.to_string()))?;
            chart
                .draw_series(LineSeries::new(vec![(x0, 0.0), (x1, 0.0)], BLACK.mix(0.5)))
                .map_err(|e| err(e.to_string()))?;
            draw_series(&mut chart, series, |p| p.1.is_finite(), None).map_err(err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename plot into place", path, e))
}

/// Greyscale images (rows of `side x side` pixels in [0, 1], black on white
/// as digits are usually shown) in a grid of `cols` per row, each pixel
/// `scale` x `scale` screen pixels, under `title`; written to `path` as PNG.
pub fn image_grid(
    path: &Path,
    title: &str,
    images: &[&[f32]],
    side: usize,
    cols: usize,
    scale: u32,
) -> Result<()> {
    captioned_image_grid(path, title, images, &[], side, cols, scale)
}

/// `image_grid` with a short caption under each image (none if `captions` is empty).
pub fn captioned_image_grid(
    path: &Path,
    title: &str,
    images: &[&[f32]],
    captions: &[String],
    side: usize,
    cols: usize,
    scale: u32,
) -> Result<()> {
    ensure_font();
    let err = |e: String| Error::Checkpoint(format!("cannot draw {}: {e}", path.display()));
    let cols = cols.max(1);
    let grid_rows = images.len().div_ceil(cols).max(1);
    let cell = side as u32 * scale + 2;
    let caption_h = if captions.is_empty() { 0 } else { 16 };
    let title_h = 34;
    let width = (cols as u32 * cell + 2).max(9 * title.len() as u32 + 12);
    let height = grid_rows as u32 * (cell + caption_h) + 2 + title_h;
    let tmp = path.with_extension("png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        root.draw(&Text::new(
            title.to_string(),
            (6, 6),
            ("sans-serif", 18).into_font(),
        ))
        .map_err(|e| err(e.to_string()))?;
        for (n, img) in images.iter().enumerate() {
            let (gx, gy) = (
                (n % cols) as u32 * cell + 2,
                (n / cols) as u32 * (cell + caption_h) + 2 + title_h,
            );
            if let Some(c) = captions.get(n) {
                let at = (gx as i32, (gy + side as u32 * scale + 1) as i32);
                root.draw(&Text::new(c.clone(), at, ("sans-serif", 13).into_font()))
                    .map_err(|e| err(e.to_string()))?;
            }
            for (p, &v) in img.iter().enumerate().take(side * side) {
                let level = (255.0 * (1.0 - v.clamp(0.0, 1.0))).round() as u8;
                let (x, y) = (
                    (p % side) as u32 * scale + gx,
                    (p / side) as u32 * scale + gy,
                );
                root.draw(&Rectangle::new(
                    [
                        (x as i32, y as i32),
                        ((x + scale) as i32, (y + scale) as i32),
                    ],
                    RGBColor(level, level, level).filled(),
                ))
                .map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename plot into place", path, e))
}

/// Train/validation/test error per epoch (log scale; a 0.00% point is an open
/// circle on the bottom edge), with the warm-started errors where the run
/// scored them.
pub fn learning_curve(path: &Path, title: &str, history: &[EpochMetrics]) -> Result<()> {
    // Epochs that `eval_every` skipped have no validation or test point; the
    // lines join the epochs that were scored.
    let pick = |f: fn(&EpochMetrics) -> Option<f64>| {
        history
            .iter()
            .filter_map(|m| Some((m.epoch as f64, f(m)?)))
            .collect()
    };
    let mut series = vec![
        Series {
            name: "train",
            points: pick(|m| Some(m.train_error)),
            color: PALETTE[0],
        },
        Series {
            name: "validation",
            points: pick(|m| m.val_error),
            color: PALETTE[1],
        },
        Series {
            name: "test",
            points: pick(|m| m.test_error),
            color: PALETTE[2],
        },
    ];
    if history.iter().any(|m| m.val_error_warm.is_some()) {
        series.push(Series {
            name: "validation (warm)",
            points: pick(|m| m.val_error_warm),
            color: PALETTE[3],
        });
        series.push(Series {
            name: "test (warm)",
            points: pick(|m| m.test_error_warm),
            color: PALETTE[4],
        });
    }
    line_chart(
        path,
        &format!("{title}: error per epoch"),
        "epoch",
        "error (log scale; open circles on the bottom edge: 0.00%)",
        &series,
    )
}

/// Draws each series as a line with markers. Points that `keep` rejects break
/// the line (a gap, never a line across them); with `zeros_at`, points whose
/// value is exactly 0 (off a log axis) are drawn as open circles at that height.
fn draw_series<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series<'_>],
    keep: impl Fn(&(f64, f64)) -> bool,
    zeros_at: Option<f64>,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        let color = s.color;
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(&keep).collect();
        let dense = pts.len() > 100;
        // Dense curves (an RL run's episodes) as thin lines without markers.
        let width = if dense { 1 } else { 2 };
        let mut labelled = s.name.is_empty();
        // The runs of kept points between rejected ones.
        let segments = s.points.split(|p| !keep(p)).filter(|seg| !seg.is_empty());
        for seg in segments {
            let drawn = chart
                .draw_series(LineSeries::new(seg.to_vec(), color.stroke_width(width)))
                .map_err(|e| e.to_string())?;
            // Curves without a name share the legend entry of a named one.
            if !labelled {
                labelled = true;
                drawn.label(s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if !dense {
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        if let Some(floor) = zeros_at {
            let zeros = s.points.iter().filter(|p| p.1 == 0.0);
            chart
                .draw_series(zeros.map(|p| Circle::new((p.0, floor), 4, color.stroke_width(2))))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Colors for up to six series.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

#[cfg(test)]
mod tests {
    #[test]
    fn log_ticks_label_1_2_5_of_every_decade_in_range() {
        let t = super::log_ticks(0.015, 0.4);
        let want = [0.02, 0.05, 0.1, 0.2];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        assert_eq!(super::log_ticks(3.0, 4.0), Vec::<f64>::new());
    }

    #[test]
    fn percent_labels_stay_distinct_below_a_hundredth_of_a_percent() {
        let labels: Vec<String> = [0.05, 0.0001, 0.00005, 0.00002, 0.00001]
            .iter()
            .map(super::percent)
            .collect();
        assert_eq!(labels, ["5.00%", "0.01%", "0.005%", "0.002%", "0.001%"]);
    }
}
