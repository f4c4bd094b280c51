//! `hongbao settle --metrics ADDR`: settle's own Prometheus endpoint, above all its lag (how
//! many durable claims wait in the logs, and since when). A plain thread answering one short
//! HTTP request per connection; the pass loop updates the numbers after every pass.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Pass;

/// What settle has done, for /metrics.
#[derive(Debug, Clone, Default)]
pub struct SettleMetrics {
    pub passes: u64,
    pub recorded: u64,
    pub cents: u64,
    pub again: u64,
    pub conflicts: u64,
    /// Durable claims in the logs not yet in the ledger, after the last pass.
    pub lag_claims: u64,
    /// Seconds since the oldest of them was claimed (0 when none waits).
    pub lag_seconds: u64,
    pub last_pass_unix: i64,
}

impl SettleMetrics {
    pub fn add(&mut self, pass: &Pass, now_unix: i64) {
        self.passes += 1;
        self.recorded += pass.recorded;
        self.cents += pass.cents;
        self.again += pass.again;
        self.conflicts += pass.conflicts;
        self.lag_claims = pass.behind;
        self.lag_seconds = pass
            .oldest_behind_unix
            .map_or(0, |t| (now_unix - i64::from(t)).max(0) as u64);
        self.last_pass_unix = now_unix;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "hongbao_settle_passes_total",
            "counter",
            "Passes over the logs.",
            self.passes,
        );
        metric(
            "hongbao_settle_claims_total",
            "counter",
            "Claims recorded in the ledger by this process.",
            self.recorded,
        );
        metric(
            "hongbao_settle_cents_total",
            "counter",
            "Cents of the claims recorded by this process.",
            self.cents,
        );
        metric(
            "hongbao_settle_read_again_total",
            "counter",
            "Claims read again that the ledger already had.",
            self.again,
        );
        metric(
            "hongbao_settle_conflicts_total",
            "counter",
            "Second claims of an envelope held in conflicts.",
            self.conflicts,
        );
        metric(
            "hongbao_settle_lag_claims",
            "gauge",
            "Durable claims in the logs not yet in the ledger.",
            self.lag_claims,
        );
        metric(
            "hongbao_settle_lag_seconds",
            "gauge",
            "Seconds since the oldest claim not yet in the ledger was made.",
            self.lag_seconds,
        );
        metric(
            "hongbao_settle_last_pass_unix",
            "gauge",
            "When the last pass ended (Unix seconds).",
            self.last_pass_unix.max(0) as u64,
        );
        out
    }
}

/// Serves `metrics` at `addr` (GET /metrics) on a thread of its own; returns the bound address.
pub fn serve(addr: SocketAddr, metrics: Arc<Mutex<SettleMetrics>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("settle-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let text = metrics.lock().map(|m| m.render()).unwrap_or_default();
                let _ = answer(stream, &text);
            }
        })?;
    Ok(bound)
}

/// Reads one request head (at most 8 KiB, 2 s) and answers it.
fn answer(mut stream: TcpStream, text: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let (status, body) = if line.starts_with("GET /metrics ") {
        ("200 OK", text)
    } else {
        ("404 Not Found", "only GET /metrics is served here\n")
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_claims_left_and_the_age_of_the_oldest() {
        let mut m = SettleMetrics::default();
        let pass = Pass {
            recorded: 10,
            cents: 500,
            behind: 7,
            oldest_behind_unix: Some(1_000),
            ..Pass::default()
        };
        m.add(&pass, 1_030);
        let text = m.render();
        assert!(text.contains("hongbao_settle_lag_claims 7\n"), "{text}");
        assert!(text.contains("hongbao_settle_lag_seconds 30\n"), "{text}");
        assert!(text.contains("hongbao_settle_claims_total 10\n"), "{text}");
        m.add(&Pass::default(), 1_031);
        assert!(m.render().contains("hongbao_settle_lag_seconds 0\n"));
    }
}
