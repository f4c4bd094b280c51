//! SVG line charts for load reports: latency by percentile (HdrHistogram's percentile axis,
//! where 90%, 99%, 99.9% ... are equally spaced), and values over time on linear or log scales.
//! Pure functions from numbers to a standalone SVG document (no scripts, no external fonts or
//! styles), so a chart opens in any browser, embeds in HTML as is and diffs as text. Runs on
//! whichever thread renders a report.

use std::fmt::Write;

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// From 0 to a round number above the largest value.
    Linear,
    /// Decades from below the smallest to above the largest positive value.
    Log,
    /// Percentiles 0..100 placed at -log10(1 - p/100): 0%, 90%, 99%, 99.9% ... equally spaced,
    /// 100% (the maximum) at the right end.
    Percentile,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Line {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Line {
        Line {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    pub fn dashed(mut self) -> Line {
        self.dashed = true;
        self
    }
}

/// A chart: axes, labels and lines. `x_fmt`/`y_fmt` write tick labels from axis values.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x: Scale,
    pub y: Scale,
    pub x_fmt: fn(f64) -> String,
    pub y_fmt: fn(f64) -> String,
    pub lines: Vec<Line>,
    /// Mark each point (lines of at most 60 points): for per-second series, not for curves.
    pub markers: bool,
}

/// Line colours, in order (distinguishable for the common colour-vision deficiencies).
pub const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#999999",
];

const WIDTH: f64 = 760.0;
const PLOT_W: f64 = 640.0;
const PLOT_H: f64 = 280.0;
const LEFT: f64 = 90.0;
const TOP: f64 = 40.0;
const LEGEND_ROW: f64 = 18.0;

/// Escapes text for XML/HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Position of a percentile on the percentile axis; `None` for 100% (drawn at the right end).
pub fn percentile_pos(p: f64) -> Option<f64> {
    let rest = 1.0 - p / 100.0;
    if rest.is_nan() || rest <= 1e-12 {
        return None;
    }
    Some(-rest.log10())
}

/// The label of decade `k` of the percentile axis: 0%, 90%, 99%, 99.9%, ...
pub fn percentile_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        k => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
}

/// A round step for about `n` intervals up to `max` (1, 2, 2.5 or 5 times a power of ten).
pub fn nice_step(max: f64, n: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// An axis: the transformed range and the ticks (transformed position, label).
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub scale: Scale,
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// The axis that shows every value in `values` (non-finite values, and values <= 0 on a
    /// log axis, are left out).
    pub fn fit(scale: Scale, values: &[f64], fmt: fn(f64) -> String) -> Axis {
        match scale {
            Scale::Linear => {
                let max = values
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(0.0f64, f64::max);
                let step = nice_step(max, 5.0);
                let n = (max / step).ceil().max(1.0) as u32;
                let ticks = (0..=n)
                    .map(|i| (i as f64 * step, fmt(i as f64 * step)))
                    .collect();
                Axis {
                    scale,
                    lo: 0.0,
                    hi: n as f64 * step,
                    ticks,
                }
            }
            Scale::Log => {
                let pos: Vec<f64> = values
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .collect();
                let (mut lo, mut hi) = match (
                    pos.iter().copied().reduce(f64::min),
                    pos.iter().copied().reduce(f64::max),
                ) {
                    (Some(a), Some(b)) => (a.log10().floor(), b.log10().ceil()),
                    _ => (0.0, 1.0),
                };
                if hi <= lo {
                    hi = lo + 1.0;
                }
                // At most ten decades: a chart of 1 ns .. 60 s stays readable.
                if hi - lo > 10.0 {
                    lo = hi - 10.0;
                }
                let ticks = (lo as i32..=hi as i32)
                    .map(|k| (k as f64, fmt(10f64.powi(k))))
                    .collect();
                Axis {
                    scale,
                    lo,
                    hi,
                    ticks,
                }
            }
            Scale::Percentile => {
                let far = values
                    .iter()
                    .filter_map(|p| percentile_pos(*p))
                    .fold(0.0f64, f64::max);
                let hi = (far.floor() + 1.0).max(2.0);
                let mut ticks: Vec<(f64, String)> = (0..hi as u32)
                    .map(|k| (k as f64, percentile_label(k)))
                    .collect();
                ticks.push((hi, "max".into()));
                Axis {
                    scale,
                    lo: 0.0,
                    hi,
                    ticks,
                }
            }
        }
    }

    /// The transformed position of a value, `None` when it cannot be shown on this axis.
    pub fn pos(&self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        let t = match self.scale {
            Scale::Linear => v,
            Scale::Log => {
                if v <= 0.0 {
                    return None;
                }
                v.log10().max(self.lo)
            }
            Scale::Percentile => percentile_pos(v).unwrap_or(self.hi).min(self.hi),
        };
        Some(t)
    }

    /// 0.0 at the low end, 1.0 at the high end.
    pub fn fraction(&self, v: f64) -> Option<f64> {
        self.pos(v).map(|t| (t - self.lo) / (self.hi - self.lo))
    }
}

/// Renders a chart as a standalone SVG document.
pub fn svg(chart: &Chart) -> String {
    let xs: Vec<f64> = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .collect();
    let xa = Axis::fit(chart.x, &xs, chart.x_fmt);
    let ya = Axis::fit(chart.y, &ys, chart.y_fmt);
    let height = TOP + PLOT_H + 56.0 + LEGEND_ROW * chart.lines.len() as f64 + 8.0;
    let (x0, y0) = (LEFT, TOP + PLOT_H);
    let px = |f: f64| x0 + f * PLOT_W;
    let py = |f: f64| y0 - f * PLOT_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, "<title>{}</title>", esc(&chart.title));
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        esc(&chart.title)
    );
    // Grid and ticks.
    for (t, label) in &xa.ticks {
        let x = px((t - xa.lo) / (xa.hi - xa.lo));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y0}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + 16.0,
            esc(label)
        );
    }
    for (t, label) in &ya.ticks {
        let y = py((t - ya.lo) / (ya.hi - ya.lo));
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 + PLOT_W,
            x0 - 6.0,
            y + 4.0,
            esc(label)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        x0 + PLOT_W / 2.0,
        y0 + 36.0,
        esc(&chart.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0,
        esc(&chart.y_label)
    );
    if xs.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
            x0 + PLOT_W / 2.0,
            TOP + PLOT_H / 2.0
        );
    }
    // Lines, then the legend.
    for (i, line) in chart.lines.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .filter_map(|(x, y)| Some((px(xa.fraction(*x)?), py(ya.fraction(*y)?))))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let mut d = String::new();
        for (x, y) in &pts {
            let _ = write!(d, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"><title>{}</title></polyline>"#,
            d.trim_end(),
            esc(&line.name)
        );
        if chart.markers && pts.len() <= 60 {
            for (x, y) in &pts {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{colour}"/>"#
                );
            }
        }
        let ly = y0 + 56.0 + LEGEND_ROW * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            x0 + 28.0,
            ly - 4.0,
            x0 + 36.0,
            ly,
            esc(&line.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Tick label for microseconds: `1 µs`, `10 µs`, `100 µs`, `1 ms`, `10 ms`, `100 ms`, `1 s`.
pub fn fmt_us_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{} ms", trim(v / 1e3))
    } else if v >= 1.0 {
        format!("{} µs", trim(v))
    } else {
        format!("{} ns", trim(v * 1e3))
    }
}

/// Tick label for a count or rate: `0`, `500`, `1.5k`, `2.5M`.
pub fn fmt_count_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// Tick label for seconds.
pub fn fmt_seconds_tick(v: f64) -> String {
    format!("{} s", trim(v))
}

/// A number with at most three decimals and no trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_axis_spaces_nines_equally() {
        assert!(close(percentile_pos(0.0).unwrap(), 0.0));
        assert!(close(percentile_pos(90.0).unwrap(), 1.0));
        assert!(close(percentile_pos(99.0).unwrap(), 2.0));
        assert!(close(percentile_pos(99.9).unwrap(), 3.0));
        assert_eq!(percentile_pos(100.0), None);
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(4), "99.99%");
        // A curve reaching 99.95% gets decades up to 99.9% and 100% at the right end.
        let a = Axis::fit(Scale::Percentile, &[0.0, 50.0, 99.95, 100.0], fmt_us_tick);
        assert_eq!(a.hi, 4.0);
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "max"]);
        assert_eq!(a.fraction(100.0), Some(1.0));
        assert!(close(a.fraction(99.0).unwrap(), 0.5));
    }

    #[test]
    fn log_axis_covers_the_decades_of_the_values() {
        let a = Axis::fit(Scale::Log, &[3.0, 250.0, 0.0, f64::NAN], fmt_us_tick);
        assert_eq!((a.lo, a.hi), (0.0, 3.0));
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["1 µs", "10 µs", "100 µs", "1 ms"]);
        assert!(close(a.fraction(10.0).unwrap(), 1.0 / 3.0));
        assert_eq!(a.pos(0.0), None);
        // One value: one decade around it.
        let b = Axis::fit(Scale::Log, &[100.0], fmt_us_tick);
        assert_eq!((b.lo, b.hi), (2.0, 3.0));
    }

    #[test]
    fn linear_axis_ends_on_a_round_number() {
        let a = Axis::fit(Scale::Linear, &[0.0, 2_480_000.0], fmt_count_tick);
        assert_eq!(a.hi, 2_500_000.0);
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["0", "500k", "1M", "1.5M", "2M", "2.5M"]);
        let z = Axis::fit(Scale::Linear, &[0.0, 0.0], fmt_count_tick);
        assert_eq!(z.hi, 1.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(11.0, 5.0), 2.5);
    }

    #[test]
    fn svg_places_points_and_escapes_text() {
        let chart = Chart {
            title: "a <b> & \"c\"".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: Scale::Linear,
            y: Scale::Linear,
            x_fmt: fmt_seconds_tick,
            y_fmt: fmt_count_tick,
            lines: vec![Line::new("<script>", vec![(0.0, 0.0), (10.0, 100.0)])],
            markers: true,
        };
        let text = svg(&chart);
        assert!(!text.contains("<script>") && !text.contains("<b>"));
        assert!(text.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        // (0,0) is the bottom-left corner of the plot, (10,100) the top-right.
        let bl = format!("{LEFT:.1},{:.1}", TOP + PLOT_H);
        let tr = format!("{:.1},{TOP:.1}", LEFT + PLOT_W);
        assert!(text.contains(&format!("points=\"{bl} {tr}\"")), "{text}");
        assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(text.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn empty_chart_says_so() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: Scale::Percentile,
            y: Scale::Log,
            x_fmt: fmt_seconds_tick,
            y_fmt: fmt_us_tick,
            lines: Vec::new(),
            markers: false,
        };
        assert!(svg(&chart).contains(">no data<"));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_us_tick(1000.0), "1 ms");
        assert_eq!(fmt_us_tick(0.1), "100 ns");
        assert_eq!(fmt_us_tick(2_500_000.0), "2.5 s");
        assert_eq!(fmt_count_tick(1500.0), "1.5k");
        assert_eq!(fmt_seconds_tick(10.0), "10 s");
    }
}
