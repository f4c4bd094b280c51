//! What `hongbao load` measures and how it is written down: latency histograms per operation and
//! outcome (HdrHistogram, nanoseconds), the per-second timeline, and the outputs built from them
//! (the JSON summary, `.hgrm` percentile distributions in HdrHistogram's standard text format,
//! and a markdown table). Pure data: the load threads record into a [`Recorder`] each, the main
//! thread merges them. docs/formats/load-report.md describes the files.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded (60 s); slower replies are recorded as 60 s.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant digits kept by every histogram.
pub const SIGFIG: u8 = 3;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGFIG).expect("valid bounds")
}

/// The operations the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Shake,
    Open,
    Hello,
    Ping,
    /// Redis `LPOP key` (RESP), for the peer benchmark against redis-server.
    Lpop,
    /// IM SEND (`--op im`), answered once durable in the sender's stream.
    Send,
    /// IM SYNC: a pull after a PUSH (`--op im`).
    Sync,
    /// Not a request: an IM message becoming visible in a recipient's pull, timed from its
    /// send (outcomes `chat` and `group`).
    Delivery,
}

impl Op {
    /// Every operation, in the order reports list them.
    pub const ALL: [Op; 8] = [
        Op::Shake,
        Op::Open,
        Op::Hello,
        Op::Ping,
        Op::Lpop,
        Op::Send,
        Op::Sync,
        Op::Delivery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Shake => "shake",
            Op::Open => "open",
            Op::Hello => "hello",
            Op::Ping => "ping",
            Op::Lpop => "lpop",
            Op::Send => "send",
            Op::Sync => "sync",
            Op::Delivery => "delivery",
        }
    }
}

/// Latencies of one (operation, outcome): from the intended send time (`corrected`, free of
/// coordinated omission in open-loop runs) and from the actual send time (`uncorrected`). In a
/// closed loop the two are the same.
pub struct Series {
    pub op: Op,
    pub outcome: &'static str,
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
}

/// One load thread's measurements, merged by the main thread at the end.
#[derive(Default)]
pub struct Recorder {
    pub series: Vec<Series>,
}

impl Recorder {
    /// Records one reply. `outcome` names a shake outcome, `ok`, or an error code.
    pub fn record(
        &mut self,
        op: Op,
        outcome: &'static str,
        corrected_ns: u64,
        uncorrected_ns: u64,
    ) {
        let i = match self
            .series
            .iter()
            .position(|s| s.op == op && s.outcome == outcome)
        {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    op,
                    outcome,
                    corrected: histogram(),
                    uncorrected: histogram(),
                });
                self.series.len() - 1
            }
        };
        let s = &mut self.series[i];
        s.corrected.saturating_record(corrected_ns.max(1));
        s.uncorrected.saturating_record(uncorrected_ns.max(1));
    }

    pub fn merge(&mut self, other: &Recorder) {
        for o in &other.series {
            match self
                .series
                .iter_mut()
                .find(|s| s.op == o.op && s.outcome == o.outcome)
            {
                Some(s) => {
                    s.corrected.add(&o.corrected).expect("same bounds");
                    s.uncorrected.add(&o.uncorrected).expect("same bounds");
                }
                None => self.series.push(Series {
                    op: o.op,
                    outcome: o.outcome,
                    corrected: o.corrected.clone(),
                    uncorrected: o.uncorrected.clone(),
                }),
            }
        }
        self.series
            .sort_by(|a, b| (a.op, a.outcome).cmp(&(b.op, b.outcome)));
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// All series of one operation (every outcome) merged; `None` when there is none.
    pub fn op_total(&self, op: Op, corrected: bool) -> Option<Histogram<u64>> {
        let mut total: Option<Histogram<u64>> = None;
        for s in self.series.iter().filter(|s| s.op == op) {
            let h = if corrected {
                &s.corrected
            } else {
                &s.uncorrected
            };
            match &mut total {
                Some(t) => t.add(h).expect("same bounds"),
                None => total = Some(h.clone()),
            }
        }
        total
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            min_us: us(h.min()),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
        }
    }
}

/// The latency-by-percentile curve of a histogram: (percentile, microseconds) points, as the
/// `.hgrm` file lists them (five ticks per half distance to 100%).
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to() * 100.0, us(v.value_iterated_to())))
        .collect()
}

/// One (operation, outcome) in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    pub op: Op,
    /// A shake outcome (`envelope`, `nothing`, ...), `ok`, an error code name, or `all`.
    pub outcome: String,
    pub count: u64,
    pub per_second: f64,
    /// Latency from the intended send time.
    pub latency: Percentiles,
    /// Latency from the actual send time (differs from `latency` only in open-loop runs that
    /// fell behind their schedule).
    pub latency_uncorrected: Percentiles,
    /// Percentile curve (percentile, µs) of `latency`.
    pub curve: Vec<(f64, f64)>,
    /// Percentile curve of `latency_uncorrected`; open-loop runs only (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve_uncorrected: Vec<(f64, f64)>,
}

impl SeriesSummary {
    pub fn of(
        op: Op,
        outcome: &str,
        corrected: &Histogram<u64>,
        uncorrected: &Histogram<u64>,
        seconds: f64,
    ) -> SeriesSummary {
        SeriesSummary {
            op,
            outcome: outcome.to_string(),
            count: corrected.len(),
            per_second: corrected.len() as f64 / seconds.max(1e-9),
            latency: Percentiles::of(corrected),
            latency_uncorrected: Percentiles::of(uncorrected),
            curve: curve(corrected),
            curve_uncorrected: Vec::new(),
        }
    }
}

/// One second of the measured run, all operations together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the measurement started (the end of warm-up); the first is 1.
    pub second: u64,
    pub replies: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Error replies by code name (absent in summaries written before this field existed).
    #[serde(default)]
    pub errors_by_code: BTreeMap<String, u64>,
}

impl Second {
    /// How long this second lasted: 1 s, except the last one of a run that ended mid-second.
    pub fn length_s(&self, measured_s: f64) -> f64 {
        (measured_s - (self.second.saturating_sub(1)) as f64).clamp(1e-3, 1.0)
    }
}

/// What one second of one load thread measured (sent to the main thread each second).
pub struct Tick {
    pub second: u64,
    pub warmup: bool,
    pub replies: u64,
    pub errors: u64,
    /// Error replies by code name.
    pub error_codes: Vec<(&'static str, u64)>,
    pub latency: Histogram<u64>,
}

impl Tick {
    pub fn new(second: u64, warmup: bool) -> Tick {
        Tick {
            second,
            warmup,
            replies: 0,
            errors: 0,
            error_codes: Vec::new(),
            latency: histogram(),
        }
    }
}

/// Merges the ticks of all threads for one second.
pub fn merge_ticks(ticks: &[Tick]) -> Second {
    let mut h = histogram();
    let (mut replies, mut errors) = (0, 0);
    let mut errors_by_code = BTreeMap::new();
    for t in ticks {
        h.add(&t.latency).expect("same bounds");
        replies += t.replies;
        errors += t.errors;
        for (k, v) in &t.error_codes {
            *errors_by_code.entry(k.to_string()).or_default() += v;
        }
    }
    Second {
        second: ticks.first().map_or(0, |t| t.second),
        replies,
        errors,
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        errors_by_code,
    }
}

/// How a run was set up (echoed in the summary so a report can say what it compares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: String,
    /// `closed` (conns x depth in flight) or `open` (fixed rate).
    pub mode: String,
    pub threads: usize,
    pub connections: usize,
    /// Closed loop: requests in flight per connection. Open loop: the most in flight per
    /// connection.
    pub depth: usize,
    /// Open loop: requests per second, all threads.
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub ramp_s: f64,
    pub duration_s: f64,
    pub op: Op,
    pub open_envelopes: bool,
    pub uids: u64,
    pub obey_backoff: bool,
    /// The load threads polled instead of sleeping between rounds (`--spin`).
    #[serde(default)]
    pub spin: bool,
}

/// The JSON summary of a run (docs/formats/load-report.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tool: String,
    pub version: String,
    pub label: String,
    pub command: String,
    pub machine: String,
    pub date: String,
    pub config: RunConfig,
    /// Seconds measured (after warm-up); shorter than asked when the run ended early.
    pub measured_s: f64,
    /// False when the run ended before its duration (server gone); the numbers cover what was
    /// measured until then.
    pub complete: bool,
    pub stop_reason: Option<String>,
    pub replies: u64,
    pub replies_per_second: f64,
    /// Error replies by error code name.
    pub errors: BTreeMap<String, u64>,
    /// Requests not sent because the server's back-off hint for that user had not passed.
    pub held_back: u64,
    /// Connections lost during the run, and the first few reasons.
    pub connections_lost: u64,
    pub connection_errors: Vec<String>,
    /// Per operation: all outcomes together (`outcome: all`), then each outcome.
    pub series: Vec<SeriesSummary>,
    pub timeline: Vec<Second>,
    /// `--idle`: the idle connections held during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<super::idle::IdleSummary>,
}

impl Summary {
    /// The combined series of one operation, if it ran.
    pub fn op_all(&self, op: Op) -> Option<&SeriesSummary> {
        self.series
            .iter()
            .find(|s| s.op == op && s.outcome == "all")
    }
}

/// Builds the per-operation and per-outcome series of a merged recorder; `open_loop` adds the
/// uncorrected percentile curve of each operation.
pub fn summarize_series(rec: &Recorder, seconds: f64, open_loop: bool) -> Vec<SeriesSummary> {
    let mut out = Vec::new();
    for op in Op::ALL {
        let (Some(c), Some(u)) = (rec.op_total(op, true), rec.op_total(op, false)) else {
            continue;
        };
        let mut all = SeriesSummary::of(op, "all", &c, &u, seconds);
        if open_loop {
            all.curve_uncorrected = curve(&u);
        }
        out.push(all);
        for s in rec.series.iter().filter(|s| s.op == op) {
            out.push(SeriesSummary::of(
                op,
                s.outcome,
                &s.corrected,
                &s.uncorrected,
                seconds,
            ));
        }
    }
    out
}

/// HdrHistogram's percentile distribution text (`outputPercentileDistribution` of the Java
/// library, five ticks per half distance), values in milliseconds: the `.hgrm` format that
/// wrk2 prints and HdrHistogram's plotter reads.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const NS_PER_MS: f64 = 1e6;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / NS_PER_MS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = (2 * 10u64.pow(SIGFIG as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / NS_PER_MS,
        h.stdev() / NS_PER_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / NS_PER_MS,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

/// A latency in microseconds as a person reads it: `12.3 µs`, `456 µs`, `12.3 ms`.
pub fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

/// The load of a run in a sentence: `closed loop, 64 connections x depth 1` or
/// `open loop at 1000000 requests/s (64 connections, at most 16 in flight each)`.
pub fn load_phrase(c: &RunConfig) -> String {
    match c.rate {
        Some(rate) => format!(
            "open loop at {rate:.0} requests/s ({} connections, at most {} in flight each)",
            c.connections, c.depth
        ),
        None => format!(
            "closed loop, {} connections x depth {}",
            c.connections, c.depth
        ),
    }
}

/// The idle connections of a run in a sentence.
pub fn idle_phrase(i: &super::idle::IdleSummary) -> String {
    format!(
        "{} asked, {} held to the end, {} lost; opened{} in {:.1} s{}",
        i.asked,
        i.held,
        i.lost,
        if i.authenticated {
            " and authenticated"
        } else {
            ""
        },
        i.open_s,
        if i.sources.is_empty() {
            String::new()
        } else {
            format!(" from {} source addresses", i.sources.len())
        }
    )
}

/// The markdown table of one run: one row per operation and outcome.
pub fn markdown(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.config;
    let _ = writeln!(out, "### {}\n", s.label);
    let _ = writeln!(out, "- command: `{}`", s.command);
    let load = load_phrase(c);
    let _ = writeln!(
        out,
        "- load: {load}; {} threads; {:.0} s measured after {:.0} s warm-up{}",
        c.threads,
        s.measured_s,
        c.warmup_s,
        if s.complete {
            String::new()
        } else {
            format!(
                " (ended early: {})",
                s.stop_reason.as_deref().unwrap_or("unknown")
            )
        }
    );
    if let Some(i) = &s.idle {
        let _ = writeln!(out, "- idle connections: {}", idle_phrase(i));
    }
    let _ = writeln!(out, "- machine: {}\n- date: {}\n", s.machine, s.date);
    out.push_str(&super::report::run_table(s).markdown());
    if !s.errors.is_empty() || s.connections_lost > 0 || s.held_back > 0 {
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "\nerror replies: {}; connections lost: {}; held back by back-off: {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(", ")
            },
            s.connections_lost,
            s.held_back
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1..=10,000 µs, once each: every percentile is known exactly (within the histogram's
    /// 3 significant digits).
    fn uniform() -> Histogram<u64> {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1_000).unwrap();
        }
        h
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.001 + 1e-9
    }

    #[test]
    fn percentiles_of_known_inputs() {
        let p = Percentiles::of(&uniform());
        assert!(close(p.min_us, 1.0), "{p:?}");
        assert!(close(p.p50_us, 5_000.0), "{p:?}");
        assert!(close(p.p90_us, 9_000.0), "{p:?}");
        assert!(close(p.p99_us, 9_900.0), "{p:?}");
        assert!(close(p.p999_us, 9_990.0), "{p:?}");
        assert!(close(p.max_us, 10_000.0), "{p:?}");
        assert!(close(p.mean_us, 5_000.5), "{p:?}");
    }

    #[test]
    fn recorder_keys_by_op_and_outcome_and_merges() {
        let mut a = Recorder::default();
        a.record(Op::Shake, "nothing", 10_000, 9_000);
        a.record(Op::Shake, "envelope", 20_000, 20_000);
        let mut b = Recorder::default();
        b.record(Op::Shake, "nothing", 30_000, 1_000);
        b.record(Op::Open, "ok", 1_000_000, 1_000_000);
        a.merge(&b);
        let series = summarize_series(&a, 2.0, false);
        let names: Vec<(Op, &str, u64)> = series
            .iter()
            .map(|s| (s.op, s.outcome.as_str(), s.count))
            .collect();
        assert_eq!(
            names,
            vec![
                (Op::Shake, "all", 3),
                (Op::Shake, "envelope", 1),
                (Op::Shake, "nothing", 2),
                (Op::Open, "all", 1),
                (Op::Open, "ok", 1),
            ]
        );
        let nothing = &series[2];
        assert!(close(nothing.latency.max_us, 30.0));
        assert!(close(nothing.latency_uncorrected.max_us, 9.0));
        assert!(close(series[0].per_second, 1.5));
    }

    #[test]
    fn hgrm_has_the_standard_layout_and_counts() {
        let text = hgrm(&uniform());
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        // First row: the minimum (1 µs = 0.001 ms) at percentile 0 with count 1.
        assert_eq!(rows[0][0], "0.001");
        assert_eq!(rows[0][1], "0.000000000000");
        assert_eq!(rows[0][2], "1");
        // Percentiles and counts never go down, and the last row is 100% of 10,000 values.
        for w in rows.windows(2) {
            assert!(w[1][1].parse::<f64>().unwrap() >= w[0][1].parse::<f64>().unwrap());
            assert!(w[1][2].parse::<u64>().unwrap() >= w[0][2].parse::<u64>().unwrap());
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p) column");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let value: f64 = last[0].parse().unwrap();
        assert!(close(value, 10.0), "{value}");
        // The row at 50% says 5 ms with about half the values below it.
        let half = rows.iter().find(|r| r[1] == "0.500000000000").unwrap();
        assert!(close(half[0].parse().unwrap(), 5.0), "{half:?}");
        let max_line = text.lines().find(|l| l.starts_with("#[Max")).unwrap();
        assert!(
            max_line.ends_with("Total count    =        10000]"),
            "{max_line}"
        );
        let max: f64 = max_line
            .split(['=', ','])
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(close(max, 10.0), "{max_line}");
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn ticks_merge_into_one_second() {
        let mut a = Tick::new(3, false);
        let mut b = Tick::new(3, false);
        for v in 1..=50u64 {
            a.latency.record(v * 1_000).unwrap();
            b.latency.record((v + 50) * 1_000).unwrap();
        }
        a.replies = 50;
        b.replies = 50;
        a.errors = 1;
        a.error_codes.push(("busy", 1));
        b.errors = 2;
        b.error_codes.push(("busy", 1));
        b.error_codes.push(("bad_token", 1));
        let s = merge_ticks(&[a, b]);
        assert_eq!((s.second, s.replies, s.errors), (3, 100, 3));
        let codes: Vec<(&str, u64)> = s
            .errors_by_code
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(codes, vec![("bad_token", 1), ("busy", 2)]);
        assert!(close(s.p50_us, 50.0) && close(s.p99_us, 99.0) && close(s.max_us, 100.0));
    }
}
