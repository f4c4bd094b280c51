//! Reports of `hongbao load` runs, built from their JSON summaries: the markdown tables, the SVG
//! charts (latency by percentile, throughput and latency over time, error replies over time;
//! [`chart`]) and one self-contained HTML page holding all of them. One run gives
//! its own report (`hongbao load --out DIR`); several runs give a side-by-side comparison with
//! ratios against the first (`hongbao report A.json B.json ...`). Pure functions plus the file
//! reading and writing of `hongbao report`; runs on the caller's thread.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::chart::{self, esc, Chart, Line, Scale};
use super::stats::{fmt_us, Op, SeriesSummary, Summary};

/// A table that renders as markdown and as HTML.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub head: Vec<String>,
    /// Which columns hold numbers (right-aligned).
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[(&str, bool)]) -> Table {
        Table {
            head: head.iter().map(|h| h.0.to_string()).collect(),
            numeric: head.iter().map(|h| h.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|",
            self.head
                .iter()
                .map(|h| cell(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for n in &self.numeric {
            out.push_str(if *n { "---:|" } else { "---|" });
        }
        out.push('\n');
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    pub fn html(&self) -> String {
        let mut out = String::from("<table>\n<tr>");
        for h in &self.head {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr>\n");
        for r in &self.rows {
            out.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                let class = if self.numeric.get(i) == Some(&true) {
                    " class=\"n\""
                } else {
                    ""
                };
                let _ = write!(out, "<td{class}>{}</td>", esc(c));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        out
    }
}

/// One row per operation and outcome of a run: the table of `report.md`.
pub fn run_table(s: &Summary) -> Table {
    let mut t = Table::new(&[
        ("op", false),
        ("outcome", false),
        ("count", true),
        ("per s", true),
        ("p50", true),
        ("p90", true),
        ("p99", true),
        ("p99.9", true),
        ("max", true),
        ("p99 uncorrected", true),
    ]);
    for r in &s.series {
        let l = &r.latency;
        t.rows.push(vec![
            r.op.name().into(),
            r.outcome.clone(),
            r.count.to_string(),
            format!("{:.0}", r.per_second),
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            fmt_us(r.latency_uncorrected.p99_us),
        ]);
    }
    t
}

/// The load of a run in a few words: `closed 64 x 1`, `open 1.98M/s`.
pub fn load_words(s: &Summary) -> String {
    let c = &s.config;
    match c.rate {
        Some(r) => format!(
            "open {}/s, {} conns",
            chart::fmt_count_tick(round3(r)),
            c.connections
        ),
        None => format!("closed {} x {}", c.connections, c.depth),
    }
}

/// Three significant digits.
fn round3(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powf(v.log10().floor() - 2.0);
    (v / mag).round() * mag
}

/// `2.00x`, or `-` when the baseline is zero.
fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 && v.is_finite() {
        format!("{:.2}x", v / base)
    } else {
        "-".into()
    }
}

/// The names runs go by in a report: their labels, numbered when two are the same.
fn run_names(runs: &[Summary]) -> Vec<String> {
    runs.iter()
        .enumerate()
        .map(|(i, s)| {
            let same = runs.iter().filter(|o| o.label == s.label).count();
            if same > 1 {
                format!("{} #{}", s.label, i + 1)
            } else {
                s.label.clone()
            }
        })
        .collect()
}

/// The side-by-side tables: for each operation, one row per run that sent it, with ratios
/// against the first run that did.
pub fn comparison_tables(runs: &[Summary]) -> Vec<(Op, Table)> {
    let names = run_names(runs);
    let ops: BTreeSet<Op> = runs
        .iter()
        .flat_map(|s| s.series.iter().map(|r| r.op))
        .collect();
    let mut out = Vec::new();
    for op in ops {
        let mut t = Table::new(&[
            ("run", false),
            ("load", false),
            ("replies/s", true),
            ("vs first", true),
            ("p50", true),
            ("p99", true),
            ("p99.9", true),
            ("max", true),
            ("p99 vs first", true),
            ("p99.9 vs first", true),
            ("errors", true),
        ]);
        let mut base: Option<&SeriesSummary> = None;
        for (s, name) in runs.iter().zip(&names) {
            let Some(r) = s.op_all(op) else { continue };
            let b = *base.get_or_insert(r);
            let errors: u64 = s
                .series
                .iter()
                .filter(|x| x.op == op && x.outcome != "all" && is_error(&x.outcome))
                .map(|x| x.count)
                .sum();
            let l = &r.latency;
            t.rows.push(vec![
                name.clone(),
                load_words(s),
                format!("{:.0}", r.per_second),
                ratio(r.per_second, b.per_second),
                fmt_us(l.p50_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                ratio(l.p99_us, b.latency.p99_us),
                ratio(l.p999_us, b.latency.p999_us),
                errors.to_string(),
            ]);
        }
        out.push((op, t));
    }
    out
}

/// Outcomes that are error replies rather than answers (docs/PROTOCOL.md's error codes).
fn is_error(outcome: &str) -> bool {
    !matches!(
        outcome,
        "ok" | "envelope" | "nothing" | "sponsor" | "closed" | "too_soon" | "capped" | "empty"
    )
}

/// A rendered report: `report.md`, `report.html` and the charts (file name, SVG text).
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: String,
    pub html: String,
    pub charts: Vec<(String, String)>,
}

impl Report {
    /// Every file of the report: (file name, text).
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        [
            ("report.md", self.markdown.as_str()),
            ("report.html", self.html.as_str()),
        ]
        .into_iter()
        .chain(self.charts.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }
}

fn latency_chart(title: &str, lines: Vec<Line>) -> Chart {
    Chart {
        title: title.into(),
        x_label: "percentile".into(),
        y_label: "latency".into(),
        x: Scale::Percentile,
        y: Scale::Log,
        x_fmt: chart::fmt_seconds_tick,
        y_fmt: chart::fmt_us_tick,
        lines,
        markers: false,
    }
}

fn time_chart(title: &str, y_label: &str, y: Scale, lines: Vec<Line>) -> Chart {
    Chart {
        title: title.into(),
        x_label: "seconds after warm-up".into(),
        y_label: y_label.into(),
        x: Scale::Linear,
        y,
        x_fmt: chart::fmt_seconds_tick,
        y_fmt: if y == Scale::Log {
            chart::fmt_us_tick
        } else {
            chart::fmt_count_tick
        },
        lines,
        markers: true,
    }
}

/// Per second of a run: replies per second.
fn throughput_points(s: &Summary) -> Vec<(f64, f64)> {
    s.timeline
        .iter()
        .map(|t| (t.second as f64, t.replies as f64 / t.length_s(s.measured_s)))
        .collect()
}

/// Per second of a run: error replies per second (all codes, or one).
fn error_points(s: &Summary, code: Option<&str>) -> Vec<(f64, f64)> {
    s.timeline
        .iter()
        .map(|t| {
            let n = match code {
                Some(c) => t.errors_by_code.get(c).copied().unwrap_or(0),
                None => t.errors,
            };
            (t.second as f64, n as f64 / t.length_s(s.measured_s))
        })
        .collect()
}

/// The charts of one run.
fn single_charts(s: &Summary) -> Vec<(String, Chart)> {
    let mut charts = Vec::new();
    let mut lines = Vec::new();
    for r in s.series.iter().filter(|r| r.outcome == "all") {
        lines.push(Line::new(r.op.name(), r.curve.clone()));
        // The uncorrected curve only where the run fell behind its schedule.
        if !r.curve_uncorrected.is_empty() && r.curve_uncorrected != r.curve {
            lines.push(
                Line::new(
                    format!("{} (from actual send, uncorrected)", r.op.name()),
                    r.curve_uncorrected.clone(),
                )
                .dashed(),
            );
        }
    }
    charts.push((
        "latency.svg".to_string(),
        latency_chart("Latency by percentile", lines),
    ));
    let outcomes: Vec<&SeriesSummary> = s
        .series
        .iter()
        .filter(|r| r.op == s.config.op && r.outcome != "all")
        .collect();
    if outcomes.len() > 1 {
        let lines = outcomes
            .iter()
            .map(|r| Line::new(format!("{} {}", r.op.name(), r.outcome), r.curve.clone()))
            .collect();
        charts.push((
            "outcomes.svg".to_string(),
            latency_chart(
                &format!("{} latency by percentile, per outcome", s.config.op.name()),
                lines,
            ),
        ));
    }
    charts.push((
        "throughput.svg".to_string(),
        time_chart(
            "Replies per second",
            "replies/s",
            Scale::Linear,
            vec![Line::new(
                "replies/s (all operations)",
                throughput_points(s),
            )],
        ),
    ));
    let pick = |f: fn(&super::stats::Second) -> f64| -> Vec<(f64, f64)> {
        s.timeline.iter().map(|t| (t.second as f64, f(t))).collect()
    };
    charts.push((
        "latency-over-time.svg".to_string(),
        time_chart(
            "Latency per second",
            "latency",
            Scale::Log,
            vec![
                Line::new("p50", pick(|t| t.p50_us)),
                Line::new("p99", pick(|t| t.p99_us)),
                Line::new("p99.9", pick(|t| t.p999_us)),
                Line::new("max", pick(|t| t.max_us)).dashed(),
            ],
        ),
    ));
    let codes: BTreeSet<&String> = s
        .timeline
        .iter()
        .flat_map(|t| t.errors_by_code.keys())
        .collect();
    let lines = if codes.is_empty() {
        vec![Line::new("error replies", error_points(s, None))]
    } else {
        codes
            .into_iter()
            .map(|c| Line::new(c.as_str(), error_points(s, Some(c))))
            .collect()
    };
    charts.push((
        "errors.svg".to_string(),
        time_chart(
            "Error replies per second, by code",
            "errors/s",
            Scale::Linear,
            lines,
        ),
    ));
    charts
}

/// The charts of several runs side by side.
fn comparison_charts(runs: &[Summary]) -> Vec<(String, Chart)> {
    let names = run_names(runs);
    let each = |f: &dyn Fn(&Summary) -> Vec<(f64, f64)>| -> Vec<Line> {
        runs.iter()
            .zip(&names)
            .map(|(s, n)| Line::new(n.as_str(), f(s)))
            .collect()
    };
    let latency = runs
        .iter()
        .zip(&names)
        .filter_map(|(s, n)| {
            let r = s.op_all(s.config.op)?;
            Some(Line::new(format!("{n} ({})", r.op.name()), r.curve.clone()))
        })
        .collect();
    vec![
        (
            "latency.svg".to_string(),
            latency_chart("Latency by percentile", latency),
        ),
        (
            "throughput.svg".to_string(),
            time_chart(
                "Replies per second",
                "replies/s",
                Scale::Linear,
                each(&throughput_points),
            ),
        ),
        (
            "p99-over-time.svg".to_string(),
            time_chart(
                "p99 latency per second",
                "p99 latency",
                Scale::Log,
                each(&|s| {
                    s.timeline
                        .iter()
                        .map(|t| (t.second as f64, t.p99_us))
                        .collect()
                }),
            ),
        ),
        (
            "errors.svg".to_string(),
            time_chart(
                "Error replies per second",
                "errors/s",
                Scale::Linear,
                each(&|s| error_points(s, None)),
            ),
        ),
    ]
}

/// What a run was, as list items: command, load, machine, date, completeness, errors.
fn run_facts(s: &Summary) -> Vec<(String, String)> {
    let c = &s.config;
    let load = super::stats::load_phrase(c);
    let mut facts = vec![
        ("command".to_string(), s.command.clone()),
        (
            "load".into(),
            format!(
                "{load}; {} threads; {} users; {:.0} s measured after {:.0} s warm-up{}",
                c.threads,
                c.uids,
                s.measured_s,
                c.warmup_s,
                if c.ramp_s > 0.0 {
                    format!(" and a {:.0} s ramp", c.ramp_s)
                } else {
                    String::new()
                }
            ),
        ),
        ("target".into(), c.target.clone()),
        ("machine".into(), s.machine.clone()),
        ("date".into(), s.date.clone()),
        (
            "replies".into(),
            format!("{} ({:.0}/s)", s.replies, s.replies_per_second),
        ),
    ];
    if let Some(i) = &s.idle {
        facts.push(("idle connections".into(), super::stats::idle_phrase(i)));
    }
    if !s.complete {
        facts.push((
            "ended early".into(),
            s.stop_reason.clone().unwrap_or_else(|| "unknown".into()),
        ));
    }
    let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    facts.push((
        "error replies".into(),
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        },
    ));
    facts.push((
        "connections lost".into(),
        if s.connection_errors.is_empty() {
            s.connections_lost.to_string()
        } else {
            format!(
                "{} ({})",
                s.connections_lost,
                s.connection_errors.join("; ")
            )
        },
    ));
    if c.spin {
        facts.push((
            "load threads".into(),
            "polled for replies (--spin), never slept".into(),
        ));
    }
    if c.obey_backoff {
        facts.push((
            "held back by back-off hints".into(),
            s.held_back.to_string(),
        ));
    }
    facts
}

const STYLE: &str = "body{font-family:Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;\
padding:0 1em;color:#222}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}\
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}th,td{border:1px solid #ccc;\
padding:3px 8px}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:0.9em}\
dt{font-weight:bold}dd{margin:0}code{font-size:0.95em}figure{margin:1em 0}\
.note{color:#555;font-size:0.9em}";

/// Renders the report of one run, or the comparison of several.
pub fn render(runs: &[Summary]) -> Report {
    assert!(!runs.is_empty(), "a report needs at least one run");
    let names = run_names(runs);
    let title = if runs.len() == 1 {
        format!("hongbao load: {}", runs[0].label)
    } else {
        format!("hongbao load: {} runs side by side", runs.len())
    };
    let charts: Vec<(String, Chart)> = if runs.len() == 1 {
        single_charts(&runs[0])
    } else {
        comparison_charts(runs)
    };
    let charts: Vec<(String, String)> = charts
        .into_iter()
        .map(|(name, c)| (name, chart::svg(&c)))
        .collect();

    let mut md = String::new();
    let mut html = String::new();
    let _ = writeln!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    if runs.len() > 1 {
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(
            md,
            "Ratios are against the first run that sent the operation ({}): throughput above \
             1x is more, latency below 1x is faster.\n",
            names[0]
        );
        let _ = writeln!(
            html,
            "<p class=\"note\">Ratios are against the first run that sent the operation \
             (<b>{}</b>): throughput above 1x is more, latency below 1x is faster. Latency \
             counts from each request's intended send time.</p>",
            esc(&names[0])
        );
        for (op, t) in comparison_tables(runs) {
            let _ = writeln!(md, "**{}** (all outcomes)\n\n{}", op.name(), t.markdown());
            let _ = writeln!(html, "<h2>{} (all outcomes)</h2>\n{}", op.name(), t.html());
        }
    }
    html.push_str("<h2>Charts</h2>\n");
    for (_, svg) in &charts {
        let _ = writeln!(html, "<figure>\n{svg}</figure>");
    }
    for (s, name) in runs.iter().zip(&names) {
        md.push_str(&super::stats::markdown(s));
        md.push('\n');
        let _ = writeln!(html, "<h2>{}</h2>\n<dl>", esc(name));
        for (k, v) in run_facts(s) {
            let v = if k == "command" {
                format!("<code>{}</code>", esc(&v))
            } else {
                esc(&v)
            };
            let _ = writeln!(html, "<dt>{}</dt><dd>{v}</dd>", esc(&k));
        }
        html.push_str("</dl>\n");
        html.push_str(&run_table(s).html());
    }
    let _ = writeln!(
        html,
        "<p class=\"note\">Written by hongbao {} from the runs' summary.json files \
         (docs/formats/load-report.md). Latency is measured from each request's intended send \
         time; in open-loop runs the dashed uncorrected line shows the figure from the actual \
         send time.</p>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION")
    );
    Report {
        markdown: md,
        html,
        charts,
    }
}

/// Reads a run's summary: a `summary.json` file, or a directory holding one.
pub fn read_summary(path: &Path) -> Result<Summary, String> {
    let file = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: not a hongbao load summary (docs/formats/load-report.md): {e}",
            file.display()
        )
    })
}

/// Writes `report.md`, `report.html` and the SVG charts into `dir` (created if missing).
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, text) in report.files() {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::load::stats::{Percentiles, RunConfig, Second};

    fn lat(p50: f64, p99: f64) -> Percentiles {
        Percentiles {
            min_us: 1.0,
            mean_us: p50,
            p50_us: p50,
            p90_us: p50 * 1.5,
            p99_us: p99,
            p999_us: p99 * 2.0,
            p9999_us: p99 * 3.0,
            max_us: p99 * 4.0,
        }
    }

    fn series(op: Op, outcome: &str, count: u64, p50: f64, p99: f64) -> SeriesSummary {
        SeriesSummary {
            op,
            outcome: outcome.into(),
            count,
            per_second: count as f64 / 2.0,
            latency: lat(p50, p99),
            latency_uncorrected: lat(p50, p99),
            curve: vec![(0.0, 1.0), (50.0, p50), (99.0, p99), (100.0, p99 * 4.0)],
            curve_uncorrected: Vec::new(),
        }
    }

    fn run(label: &str, shakes: u64, p99: f64) -> Summary {
        let mut codes = BTreeMap::new();
        codes.insert("busy".to_string(), 3);
        Summary {
            tool: "hongbao load".into(),
            version: "0".into(),
            label: label.into(),
            command: "hongbao load --label <x>".into(),
            machine: "m".into(),
            date: "2026-11-22".into(),
            config: RunConfig {
                target: "127.0.0.1:1".into(),
                mode: "closed".into(),
                threads: 1,
                connections: 64,
                depth: 1,
                rate: None,
                warmup_s: 1.0,
                ramp_s: 0.0,
                duration_s: 2.0,
                op: Op::Shake,
                open_envelopes: false,
                uids: 64,
                obey_backoff: false,
                spin: false,
            },
            measured_s: 1.5,
            complete: true,
            stop_reason: None,
            replies: shakes,
            replies_per_second: shakes as f64 / 1.5,
            errors: BTreeMap::new(),
            held_back: 0,
            connections_lost: 0,
            connection_errors: Vec::new(),
            series: vec![
                series(Op::Shake, "all", shakes, 10.0, p99),
                series(Op::Shake, "nothing", shakes - 3, 10.0, p99),
                series(Op::Shake, "busy", 3, 5.0, 6.0),
            ],
            timeline: vec![
                Second {
                    second: 1,
                    replies: shakes / 2,
                    errors: 0,
                    p50_us: 10.0,
                    p99_us: p99,
                    p999_us: p99,
                    max_us: p99,
                    errors_by_code: BTreeMap::new(),
                },
                Second {
                    second: 2,
                    replies: shakes / 2,
                    errors: 3,
                    p50_us: 10.0,
                    p99_us: p99,
                    p999_us: p99,
                    max_us: p99,
                    errors_by_code: codes,
                },
            ],
            idle: None,
        }
    }

    #[test]
    fn comparison_has_ratios_against_the_first_run() {
        let runs = [run("a", 1000, 100.0), run("b", 2000, 50.0)];
        let tables = comparison_tables(&runs);
        assert_eq!(tables.len(), 1);
        let (op, t) = &tables[0];
        assert_eq!(*op, Op::Shake);
        assert_eq!(t.rows.len(), 2);
        let col = |name: &str| t.head.iter().position(|h| h == name).unwrap();
        assert_eq!(t.rows[0][col("vs first")], "1.00x");
        assert_eq!(t.rows[1][col("vs first")], "2.00x");
        assert_eq!(t.rows[1][col("p99 vs first")], "0.50x");
        assert_eq!(t.rows[1][col("replies/s")], "1000");
        assert_eq!(t.rows[1][col("errors")], "3");
        assert_eq!(t.rows[1][col("load")], "closed 64 x 1");
        let md = t.markdown();
        assert!(
            md.lines().nth(1).unwrap().starts_with("|---|---|---:|"),
            "{md}"
        );
    }

    #[test]
    fn same_labels_are_numbered() {
        let runs = [run("x", 10, 1.0), run("x", 10, 1.0), run("y", 10, 1.0)];
        assert_eq!(run_names(&runs), ["x #1", "x #2", "y"]);
    }

    #[test]
    fn throughput_counts_a_partial_last_second_at_its_rate() {
        let s = run("a", 1000, 100.0);
        // 500 replies in the first whole second, 500 in the half second measured after it.
        assert_eq!(throughput_points(&s), vec![(1.0, 500.0), (2.0, 1000.0)]);
        assert_eq!(error_points(&s, Some("busy")), vec![(1.0, 0.0), (2.0, 6.0)]);
    }

    #[test]
    fn single_run_report_has_its_charts_and_escapes_labels() {
        let r = render(&[run("<b>run</b>", 1000, 100.0)]);
        let names: Vec<&str> = r.charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency.svg",
                "outcomes.svg",
                "throughput.svg",
                "latency-over-time.svg",
                "errors.svg"
            ]
        );
        assert!(!r.html.contains("<b>run</b>"));
        assert!(r.html.contains("&lt;b&gt;run&lt;/b&gt;"));
        assert!(r
            .html
            .contains("<code>hongbao load --label &lt;x&gt;</code>"));
        for (_, svg) in &r.charts {
            assert!(
                r.html.contains(svg.as_str()),
                "charts are embedded in the page"
            );
        }
        assert!(r.markdown.contains("| shake | nothing | 997 |"));
        // The errors chart has a line for the code seen.
        assert!(r.charts[4].1.contains("<title>busy</title>"));
    }

    #[test]
    fn comparison_report_lines_up_every_run() {
        let r = render(&[run("a", 1000, 100.0), run("b", 2000, 50.0)]);
        assert!(r
            .markdown
            .starts_with("## hongbao load: 2 runs side by side"));
        assert!(r.markdown.contains("### a") && r.markdown.contains("### b"));
        let latency = &r.charts[0].1;
        assert!(latency.contains("<title>a (shake)</title>"));
        assert!(latency.contains("<title>b (shake)</title>"));
        assert_eq!(r.html.matches("<svg ").count(), 4);
    }

    #[test]
    fn summaries_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = run("a", 1000, 100.0);
        std::fs::write(
            dir.path().join("summary.json"),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
        assert_eq!(read_summary(dir.path()).unwrap(), s);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{\"tool\": 1}").unwrap();
        let e = read_summary(&bad).unwrap_err();
        assert!(
            e.contains("bad.json") && e.contains("not a hongbao load summary"),
            "{e}"
        );
        let e = read_summary(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.contains("missing.json"), "{e}");
        let out = dir.path().join("report");
        let written = write(&render(&[s]), &out).unwrap();
        assert!(written.iter().any(|p| p.ends_with("report.html")));
        assert!(out.join("latency.svg").exists());
    }
}
