//! `cures plot RUN_DIR... --out DIR`: charts of training runs, as PNG and SVG.
//!
//! Drawn with `plotters`; text is rendered by `ab_glyph` with the DejaVu Sans font embedded by
//! the `dejavu` crate, so no system fonts or fontconfig are needed. Every file is written
//! atomically. Several runs are overlaid with their directory names as legends.
//!
//! | file | what | from |
//! |---|---|---|
//! | `accuracy_vs_step` | held-out accuracy (first benchmark) by step | eval.csv |
//! | `accuracy_vs_completions` | the same against completions generated (training + pre-rollouts): the compute-matched view | eval.csv, steps.csv |
//! | `reward_zero_var` | mean reward and the fraction of zero-variance groups by step | steps.csv |
//! | `n_vs_p_hat` | last n_i against p̂ of every sampled prompt at the last trace | prompts.csv |
//! | `rho_hist` | ρ over the pool at the last trace | prompts.csv |
//! | `p_hat_over_time` | p̂ histograms at several traced steps, one panel per run | prompts.csv |
//! | `phase_seconds` | seconds per phase (init, sample, generate, reward, train, sync), stacked per step, one panel per run | steps.csv |

pub mod data;

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub use data::{Run, Table};

/// Points of a line: (x, y).
type Series = Vec<(f64, f64)>;
/// One run's accuracy: (step, completions, accuracy).
type AccuracyPoints = Vec<(f64, f64, f64)>;
/// A panel of histograms: (title part, [(traced step, values)]).
type HistPanel = (String, Vec<(u64, Vec<f64>)>);
/// A panel of stacked phases: (run, steps, one column of seconds per phase).
type PhasePanel = (String, Vec<f64>, Vec<Vec<f64>>);

/// Chart size in pixels (PNG) / user units (SVG).
const W: u32 = 1100;
const H: u32 = 680;
/// The font family every text uses (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";

/// Run colours (colour-blind friendly, Okabe–Ito).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Failures leave text undrawable; the first chart then reports the font error.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Plotters errors carry the backend's error type; keep their message.
trait PlotErr<T> {
    fn pe(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> PlotErr<T> for Result<T, E> {
    fn pe(self) -> Result<T> {
        self.map_err(|e| anyhow!("drawing failed: {e}"))
    }
}

/// What `cures plot` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlotSummary {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Charts skipped, with the reason (no eval.csv, ...).
    pub skipped: Vec<String>,
}

/// Draw a chart with `$f(&area, args...)` into `<out>/<name>.png` and `.svg` (atomically).
macro_rules! render {
    ($out:expr, $files:expr, $name:expr, ($w:expr, $h:expr), $f:ident($($arg:expr),*)) => {{
        let (w, h): (u32, u32) = ($w, $h);
        let png = $out.join(format!("{}.png", $name));
        let tmp = $out.join(format!(".{}.{}.tmp.png", $name, std::process::id()));
        {
            let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
            root.fill(&WHITE).pe()?;
            let drawn = $f(&root, $($arg),*);
            if let Err(e) = drawn.and_then(|_| root.present().pe()) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("{}", png.display())));
            }
        }
        std::fs::rename(&tmp, &png)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), png.display()))?;
        $files.push(png);
        let svg_path = $out.join(format!("{}.svg", $name));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
            root.fill(&WHITE).pe()?;
            $f(&root, $($arg),*).with_context(|| format!("{}", svg_path.display()))?;
            root.present().pe()?;
        }
        crate::metrics::write_atomic(&svg_path, svg.as_bytes())?;
        $files.push(svg_path);
    }};
}

/// Plot `runs` into `out`. See the module docs for the charts.
pub fn plot(run_dirs: &[PathBuf], out: &Path) -> Result<PlotSummary> {
    if run_dirs.is_empty() {
        bail!("no run directory given");
    }
    register_fonts();
    let mut runs: Vec<Run> = run_dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<_>>()?;
    // Distinct legend names.
    for i in 1..runs.len() {
        let base = runs[i].name.clone();
        let mut k = 2;
        while runs[..i].iter().any(|r| r.name == runs[i].name) {
            runs[i].name = format!("{base} ({k})");
            k += 1;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();

    // Accuracy (first benchmark of the first run that evaluated).
    let mut bench = None;
    for r in &runs {
        if let Some(b) = r.first_benchmark()? {
            bench = Some(b);
            break;
        }
    }
    match bench {
        Some(b) => {
            let series: Vec<(String, AccuracyPoints)> = runs
                .iter()
                .map(|r| Ok((r.name.clone(), r.accuracy(&b)?)))
                .collect::<Result<_>>()?;
            let by_step: Vec<(String, Series)> = series
                .iter()
                .map(|(n, v)| (n.clone(), v.iter().map(|p| (p.0, p.2)).collect()))
                .collect();
            let by_comp: Vec<(String, Series)> = series
                .iter()
                .map(|(n, v)| (n.clone(), v.iter().map(|p| (p.1, p.2)).collect()))
                .collect();
            let title = format!("Held-out accuracy ({b}) by step");
            render!(
                out,
                files,
                "accuracy_vs_step",
                (W, H),
                lines(&title, "step", "held-out accuracy", &by_step, true)
            );
            let title = format!("Held-out accuracy ({b}) by compute");
            render!(
                out,
                files,
                "accuracy_vs_completions",
                (W, H),
                lines(
                    &title,
                    "completions generated (training + pre-rollouts)",
                    "held-out accuracy",
                    &by_comp,
                    true
                )
            );
        }
        None => skipped.push("accuracy_vs_step, accuracy_vs_completions: no eval.csv rows".into()),
    }

    // Mean reward and zero-variance groups by step.
    let mut reward = Vec::new();
    let mut zero = Vec::new();
    for r in &runs {
        let steps = r.steps.nums("step")?;
        reward.push((
            r.name.clone(),
            steps
                .iter()
                .copied()
                .zip(r.steps.nums("mean_reward")?)
                .collect::<Vec<_>>(),
        ));
        if r.steps.has("zero_var_group_frac") {
            zero.push((
                r.name.clone(),
                steps
                    .iter()
                    .copied()
                    .zip(r.steps.nums("zero_var_group_frac")?)
                    .collect::<Vec<_>>(),
            ));
        }
    }
    render!(
        out,
        files,
        "reward_zero_var",
        (W, 2 * H * 3 / 4),
        reward_and_zero_var(&reward, &zero)
    );

    // Per-prompt views at the last trace.
    let traced: Vec<(usize, u64)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.traced_steps() {
            Ok(s) => s.last().map(|&l| Ok((i, l))),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    if traced.is_empty() {
        skipped.push("n_vs_p_hat, rho_hist, p_hat_over_time: no prompts.csv rows".into());
    } else {
        let mut scatter = Vec::new();
        let mut rhos = Vec::new();
        for &(i, step) in &traced {
            let rows = runs[i].trace_at(step, &["p_hat", "last_n", "times_sampled", "rho"])?;
            let name = format!("{} (step {step})", runs[i].name);
            scatter.push((
                name.clone(),
                rows.iter()
                    .filter(|r| r[2] > 0.0 && r[1] > 0.0)
                    .map(|r| (r[0], r[1]))
                    .collect::<Vec<_>>(),
            ));
            rhos.push((name, rows.iter().map(|r| r[3]).collect::<Vec<_>>()));
        }
        render!(out, files, "n_vs_p_hat", (W, H), n_vs_p_hat(&scatter));
        render!(out, files, "rho_hist", (W, H), rho_hist(&rhos));
        let mut panels = Vec::new();
        for &(i, _) in &traced {
            let steps = runs[i].traced_steps()?;
            // At most 5 traces, spread over the run.
            let pick: Vec<u64> = if steps.len() <= 5 {
                steps.clone()
            } else {
                (0..5).map(|k| steps[k * (steps.len() - 1) / 4]).collect()
            };
            let mut hists = Vec::new();
            for s in pick {
                let p: Vec<f64> = runs[i]
                    .trace_at(s, &["p_hat"])?
                    .into_iter()
                    .map(|r| r[0])
                    .collect();
                hists.push((s, p));
            }
            panels.push((runs[i].name.clone(), hists));
        }
        let h = (H * 3 / 5) * panels.len() as u32;
        render!(
            out,
            files,
            "p_hat_over_time",
            (W, h.max(H)),
            p_hat_over_time(&panels)
        );
    }

    // Seconds per phase.
    let phases = [
        "sec_init",
        "sec_sample",
        "sec_generate",
        "sec_reward",
        "sec_train",
        "sec_sync",
    ];
    let mut panels = Vec::new();
    for r in &runs {
        let steps = r.steps.nums("step")?;
        let mut cols = Vec::new();
        for p in phases {
            cols.push(if r.steps.has(p) {
                r.steps.nums(p)?
            } else {
                vec![0.0; steps.len()]
            });
        }
        panels.push((r.name.clone(), steps, cols));
    }
    let h = (H * 3 / 5) * panels.len() as u32;
    render!(
        out,
        files,
        "phase_seconds",
        (W, h.max(H)),
        phase_seconds(&panels, &phases)
    );
    Ok(PlotSummary { files, skipped })
}

/// Axis range with a margin; a flat or empty series still gets a visible range.
fn range(vals: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if hi.abs() > 1e-12 {
            hi.abs() * 0.1
        } else {
            0.5
        };
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * pad;
    (lo - m, hi + m)
}

/// Accuracy-like values: the range within [0, 1] with a margin.
fn unit_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = range(vals, 0.1);
    ((lo).max(0.0), (hi).min(1.0).max(lo.max(0.0) + 0.05))
}

/// Tick labels: integers without decimals (steps, counts), blank between integers.
fn int_ticks(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{:.0}", x)
    } else {
        String::new()
    }
}

/// Tick labels with about three significant digits.
fn short_ticks(x: &f64) -> String {
    let a = x.abs();
    if a < 1e-12 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.1}")
    } else if a >= 1e-4 {
        // Enough decimals to tell neighbouring ticks apart (0.425 vs 0.43), no trailing zeros.
        let prec = ((-a.log10()).ceil() as usize + 1).max(3);
        let s = format!("{x:.prec$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.1e}")
    }
}

fn title_font() -> TextStyle<'static> {
    (FONT, 26).into_font().style(FontStyle::Bold).into()
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .label_font((FONT, 17))
        .draw()
        .pe()
}

/// The frame of a line chart over f64 axes: caption, integer x ticks, short y ticks, labels.
fn line_frame<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<
    ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, title_font())
        .margin(24)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .pe()?;
    chart
        .configure_mesh()
        .x_label_formatter(&int_ticks)
        .y_label_formatter(&short_ticks)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 19))
        .light_line_style(BLACK.mix(0.06))
        .draw()
        .pe()?;
    Ok(chart)
}

fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Series)],
    unit_y: bool,
) -> Result<()> {
    let (x0, x1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)), 0.03);
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (y0, y1) = if unit_y {
        unit_range(ys)
    } else {
        range(ys, 0.1)
    };
    let mut chart = line_frame(root, title, x_desc, y_desc, (x0, x1), (y0, y1))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))
            .pe()?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))
            .pe()?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn reward_and_zero_var<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    reward: &[(String, Series)],
    zero: &[(String, Series)],
) -> Result<()> {
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    lines(
        &top,
        "Mean reward per step",
        "step",
        "mean reward",
        reward,
        false,
    )?;
    if zero.is_empty() {
        return Ok(());
    }
    lines(
        &bottom,
        "Groups with all-equal rewards (no gradient) per step",
        "step",
        "fraction of groups",
        zero,
        true,
    )
}

fn n_vs_p_hat<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[(String, Series)],
) -> Result<()> {
    let (_, y1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)), 0.1);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Rollouts per prompt vs posterior accuracy (last trace)",
            title_font(),
        )
        .margin(24)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..1.0, 0.0..y1.max(1.0))
        .pe()?;
    chart
        .configure_mesh()
        .x_label_formatter(&short_ticks)
        .y_label_formatter(&int_ticks)
        .x_desc("posterior mean accuracy p_hat")
        .y_desc("last n_i (completions)")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 19))
        .light_line_style(BLACK.mix(0.06))
        .draw()
        .pe()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        let label = format!("{name}: {} prompts", pts.len());
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.mix(0.55).filled())))
            .pe()?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 6, c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Bin `vals` over [lo, hi] into `bins` fractions.
fn histogram(vals: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut h = vec![0.0; bins];
    let w = (hi - lo) / bins as f64;
    for &v in vals.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        h[b] += 1.0;
    }
    let n = vals.len().max(1) as f64;
    h.iter_mut().for_each(|x| *x /= n);
    h
}

/// Overlaid histograms as translucent bars with outlines.
#[allow(clippy::too_many_arguments)]
fn hist_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>)],
    lo: f64,
    hi: f64,
    bins: usize,
    colors: &[RGBColor],
) -> Result<()> {
    let hists: Vec<Vec<f64>> = series
        .iter()
        .map(|s| histogram(&s.1, lo, hi, bins))
        .collect();
    let ymax = hists
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(title, title_font())
        .margin(24)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(lo..hi, 0.0..ymax)
        .pe()?;
    chart
        .configure_mesh()
        .x_label_formatter(&short_ticks)
        .y_label_formatter(&short_ticks)
        .x_desc(x_desc)
        .y_desc("fraction of prompts")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 19))
        .light_line_style(BLACK.mix(0.06))
        .draw()
        .pe()?;
    let w = (hi - lo) / bins as f64;
    for (k, ((name, vals), h)) in series.iter().zip(&hists).enumerate() {
        let c = colors[k % colors.len()];
        chart
            .draw_series(h.iter().enumerate().map(|(b, &f)| {
                let x = lo + b as f64 * w;
                Rectangle::new([(x, 0.0), (x + w, f)], c.mix(0.25).filled())
            }))
            .pe()?;
        let mut outline = vec![(lo, 0.0)];
        for (b, &f) in h.iter().enumerate() {
            let x = lo + b as f64 * w;
            outline.push((x, f));
            outline.push((x + w, f));
        }
        outline.push((hi, 0.0));
        chart
            .draw_series(LineSeries::new(outline, c.stroke_width(2)))
            .pe()?
            .label(format!("{name} ({} prompts)", vals.len()))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 20, y + 6)], c.mix(0.6).filled())
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn rho_hist<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let (lo, hi) = range(series.iter().flat_map(|s| s.1.iter().copied()), 0.02);
    let colors: Vec<RGBColor> = (0..series.len()).map(color).collect();
    hist_panel(
        root,
        "Sampling distribution ρ over the pool (last trace)",
        "ρ (probability of drawing the prompt)",
        series,
        lo.max(0.0),
        hi,
        30,
        &colors,
    )
}

fn p_hat_over_time<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[HistPanel],
) -> Result<()> {
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, (name, hists)) in areas.iter().zip(panels) {
        let n = hists.len().max(2) as f64;
        // Early traces light blue, late ones dark red.
        let colors: Vec<RGBColor> = (0..hists.len())
            .map(|k| {
                let t = k as f64 / (n - 1.0);
                RGBColor(
                    (40.0 + 170.0 * t) as u8,
                    (120.0 - 80.0 * t) as u8,
                    (200.0 - 160.0 * t) as u8,
                )
            })
            .collect();
        let series: Vec<(String, Vec<f64>)> = hists
            .iter()
            .map(|(s, v)| (format!("step {s}"), v.clone()))
            .collect();
        hist_panel(
            area,
            &format!("Posterior mean accuracy (p_hat) over the pool, {name}"),
            "posterior mean accuracy p_hat",
            &series,
            0.0,
            1.0,
            20,
            &colors,
        )?;
    }
    Ok(())
}

fn phase_seconds<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[PhasePanel],
    phases: &[&str],
) -> Result<()> {
    let areas = root.split_evenly((panels.len().max(1), 1));
    let phase_colors = [
        RGBColor(120, 120, 120),
        RGBColor(230, 159, 0),
        RGBColor(0, 114, 178),
        RGBColor(0, 158, 115),
        RGBColor(213, 94, 0),
        RGBColor(204, 121, 167),
    ];
    for (area, (name, steps, cols)) in areas.iter().zip(panels) {
        let totals: Vec<f64> = (0..steps.len())
            .map(|i| cols.iter().map(|c| c[i]).sum())
            .collect();
        // Headroom above the tallest bar for the legend.
        let ymax = totals.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.9;
        let (x0, x1) = range(steps.iter().copied(), 0.0);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("Seconds per step by phase, {name}"), title_font())
            .margin(24)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d((x0 - 0.6)..(x1 + 0.6), 0.0..ymax)
            .pe()?;
        chart
            .configure_mesh()
            .x_label_formatter(&int_ticks)
            .y_label_formatter(&short_ticks)
            .x_desc("step")
            .y_desc("seconds")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 19))
            .light_line_style(BLACK.mix(0.06))
            .draw()
            .pe()?;
        let mut base = vec![0.0; steps.len()];
        for (k, (p, col)) in phases.iter().zip(cols).enumerate() {
            let c = phase_colors[k % phase_colors.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = steps
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    Rectangle::new(
                        [(s - 0.4, base[i]), (s + 0.4, base[i] + col[i])],
                        c.filled(),
                    )
                })
                .collect();
            let mean = col.iter().sum::<f64>() / col.len().max(1) as f64;
            chart
                .draw_series(rects)
                .pe()?
                .label(format!(
                    "{} (mean {mean:.2} s)",
                    p.trim_start_matches("sec_")
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], c.filled()));
            for (b, v) in base.iter_mut().zip(col) {
                *b += v;
            }
        }
        // The legend goes on the side away from the tallest bar.
        let tallest = (0..totals.len())
            .max_by(|&a, &b| totals[a].total_cmp(&totals[b]))
            .unwrap_or(0);
        let pos = if tallest * 2 >= totals.len() {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        };
        legend(&mut chart, pos)?;
    }
    Ok(())
}

/// `cures plot` arguments.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Run directories (outputs of `cures run`), overlaid; legends are their names.
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output directory for the PNG and SVG files.
    #[arg(long, default_value = "results/plots")]
    pub out: PathBuf,
    /// Print one JSON summary object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// The `cures plot` command.
pub fn cli(args: &PlotArgs) -> Result<()> {
    let s = plot(&args.runs, &args.out)?;
    for f in &s.files {
        println!("wrote {}", f.display());
    }
    for k in &s.skipped {
        println!("skipped {k}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

/// One method's curve over seeds: (x, median, min, max) per point.
pub type Band = Vec<(f64, f64, f64, f64)>;

fn bands_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bands: &[(String, Band)],
) -> Result<()> {
    let (x0, x1) = range(bands.iter().flat_map(|b| b.1.iter().map(|p| p.0)), 0.03);
    let (y0, y1) = range(
        bands
            .iter()
            .flat_map(|b| b.1.iter().flat_map(|p| [p.2, p.3])),
        0.1,
    );
    let mut chart = line_frame(root, title, x_desc, y_desc, (x0, x1), (y0, y1))?;
    for (i, (name, pts)) in bands.iter().enumerate() {
        let c = color(i);
        // The min–max band over seeds: the upper edge forwards, the lower edge back.
        let poly: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (p.0, p.3))
            .chain(pts.iter().rev().map(|p| (p.0, p.2)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.15).filled())))
            .pe()?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(3),
            ))
            .pe()?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Median curves with min–max seed bands, one per method, into `<out>/<name>.{png,svg}`.
pub fn seed_bands(
    out: &Path,
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bands: &[(String, Band)],
) -> Result<Vec<PathBuf>> {
    register_fonts();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut files = Vec::new();
    render!(
        out,
        files,
        name,
        (1100, 680),
        bands_chart(title, x_desc, y_desc, bands)
    );
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_and_ranges() {
        let h = histogram(&[0.0, 0.1, 0.5, 1.0], 0.0, 1.0, 2);
        assert_eq!(h, vec![0.5, 0.5]);
        assert_eq!(range(std::iter::empty(), 0.1), (0.0, 1.0));
        let (lo, hi) = range([2.0, 2.0].into_iter(), 0.1);
        assert!(lo < 2.0 && hi > 2.0);
        let (lo, hi) = unit_range([0.0, 1.0].into_iter());
        assert_eq!((lo, hi), (0.0, 1.0));
    }
}
