//! Per-core counters and the Prometheus text exposition behind `GET /metrics` (R15).
//!
//! Each core writes only its own [`CoreMetrics`] (relaxed atomics on its own cache lines, so
//! no cross-core traffic on the hot path); any core may read all of them to render `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire::ops::{ErrorCode, ShakeOutcome, ALL_ERRORS};

/// Upper bounds (microseconds) of the commit-latency histogram buckets: from what a disk with
/// a protected write cache does (tens of microseconds) to the stalls of a virtual disk.
pub const COMMIT_BUCKETS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// Upper bounds (microseconds) of the IM fan-out histogram buckets.
pub const FANOUT_BUCKETS_US: [u64; 10] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 200_000, 1_000_000,
];

#[derive(Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    pub shakes: [AtomicU64; ShakeOutcome::ALL.len()],
    pub opens: AtomicU64,
    /// Repeated opens of a claimed envelope by its user, answered with the claim again.
    pub opens_again: AtomicU64,
    pub claimed_cents: AtomicU64,
    pub errors: [AtomicU64; ALL_ERRORS.len()],
    pub forwarded_out: AtomicU64,
    pub forwarded_in: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub recv_nobufs: AtomicU64,
    /// io_uring rings this core's connections are spread over, and connections the kernel
    /// closed because a ring's table of direct descriptors filled (runtime/uring.rs).
    pub net_rings: AtomicU64,
    pub accept_table_full: AtomicU64,
    pub commits: AtomicU64,
    pub commit_bytes: AtomicU64,
    pub commit_us_sum: AtomicU64,
    /// Microseconds inside the write and fdatasync calls themselves (the rest of a commit's
    /// time is the hand-off to the helper thread and back).
    pub commit_disk_us: AtomicU64,
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS_US.len() + 1],
    /// Times bulk records waited for an urgent commit instead of starting one.
    pub bulk_holds: AtomicU64,
    pub tickets_remaining: AtomicU64,
    pub key_list_reloads: AtomicU64,
    pub key_list_errors: AtomicU64,
    pub caps_users: AtomicU64,
    pub degraded: AtomicU64,
    pub im_sends: AtomicU64,
    pub im_duplicates: AtomicU64,
    pub im_stream_appends: AtomicU64,
    pub im_delivery_records: AtomicU64,
    pub im_merged_messages: AtomicU64,
    pub im_held_deliveries: AtomicU64,
    pub im_memory_refused: AtomicU64,
    /// Writes refused while the disk was below its watermark: log appends (opens, IM
    /// writes already accepted, which wait) and new IM writes answered busy.
    pub disk_refused_log: AtomicU64,
    pub disk_refused_im: AtomicU64,
    pub im_streams: AtomicU64,
    pub im_pushes: AtomicU64,
    pub im_expired: AtomicU64,
    pub im_cooled: AtomicU64,
    pub im_cold_entries: AtomicU64,
    pub im_cold_reads: AtomicU64,
    pub im_cold_read_errors: AtomicU64,
    pub im_parked: AtomicU64,
    pub im_parked_now: AtomicU64,
    pub im_appinfo_entries: AtomicU64,
    pub im_deliveries_held: AtomicU64,
    pub im_huge_backlog: AtomicU64,
    pub im_kept_messages: AtomicU64,
    pub im_kept_slots: AtomicU64,
    pub im_park_dropped: AtomicU64,
    pub im_work_refused: AtomicU64,
    pub im_group_past: AtomicU64,
    pub im_history_forgotten: AtomicU64,
    pub im_group_snapshots: AtomicU64,
    pub log_compactions: AtomicU64,
    pub log_compacted_bytes: AtomicU64,
    pub im_fanout_us_sum: AtomicU64,
    pub im_fanout_buckets: [AtomicU64; FANOUT_BUCKETS_US.len() + 1],
}

impl CoreMetrics {
    #[inline]
    /// Only the core's engine counts its shakes: a load and a store (no locked add, which
    /// would drain the store buffer on every shake), readers see each value whole.
    pub fn shake(&self, outcome: ShakeOutcome) {
        let c = &self.shakes[outcome as usize];
        c.store(c.load(Relaxed) + 1, Relaxed);
    }

    #[inline]
    pub fn error(&self, code: ErrorCode) {
        let i = ALL_ERRORS.iter().position(|e| *e == code).expect("listed");
        self.errors[i].fetch_add(1, Relaxed);
    }

    /// One IM fan-out completed `micros` after its send was accepted.
    pub fn im_fanout(&self, micros: u64) {
        self.im_fanout_us_sum.fetch_add(micros, Relaxed);
        let i = FANOUT_BUCKETS_US
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(FANOUT_BUCKETS_US.len());
        self.im_fanout_buckets[i].fetch_add(1, Relaxed);
    }

    pub fn commit(&self, bytes: u64, micros: u64, disk_micros: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_disk_us.fetch_add(disk_micros, Relaxed);
        self.commit_bytes.fetch_add(bytes, Relaxed);
        self.commit_us_sum.fetch_add(micros, Relaxed);
        let i = COMMIT_BUCKETS_US
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(COMMIT_BUCKETS_US.len());
        self.commit_buckets[i].fetch_add(1, Relaxed);
    }
}

/// A histogram family per core: `buckets` holds counts per bound (microseconds) and a last
/// one past them; `sum` is in microseconds.
fn histogram(
    out: &mut String,
    cores: &[&CoreMetrics],
    name: &str,
    help: &str,
    bounds: &[u64],
    get: fn(&CoreMetrics) -> (&[AtomicU64], u64),
) {
    family(out, name, "histogram", help);
    for (c, m) in cores.iter().enumerate() {
        let (buckets, sum_us) = get(m);
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{core=\"{c}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += buckets[bounds.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{core=\"{c}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{core=\"{c}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{core=\"{c}\"}} {cumulative}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Gauges of the whole process, without a core label.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessGauges {
    /// Free space on the data directory's file system, and the watermark below which writes
    /// are refused (`store.disk_free_min_mb`), in bytes.
    pub disk_free_bytes: u64,
    pub disk_free_min_bytes: u64,
    pub disk_low: bool,
}

/// The Prometheus text format (version 0.0.4) for all cores.
pub fn render(cores: &[&CoreMetrics], process: &ProcessGauges) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "hongbao_shakes_total",
        "counter",
        "Shakes answered, by outcome.",
    );
    for (c, m) in cores.iter().enumerate() {
        for o in ShakeOutcome::ALL {
            let v = m.shakes[o as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "hongbao_shakes_total{{core=\"{c}\",outcome=\"{}\"}} {v}",
                o.name()
            );
        }
    }
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&CoreMetrics) -> u64,
    );
    let simple: [Family; 48] = [
        (
            "hongbao_opens_total",
            "counter",
            "Envelopes opened (claim durable, answered).",
            |m| m.opens.load(Relaxed),
        ),
        (
            "hongbao_opens_again_total",
            "counter",
            "Repeated opens of an envelope already claimed by the same user, answered with \
             the claim again (again = 1).",
            |m| m.opens_again.load(Relaxed),
        ),
        (
            "hongbao_claimed_cents_total",
            "counter",
            "Money in durable claims, in cents.",
            |m| m.claimed_cents.load(Relaxed),
        ),
        (
            "hongbao_forwarded_out_total",
            "counter",
            "Requests sent to another core.",
            |m| m.forwarded_out.load(Relaxed),
        ),
        (
            "hongbao_forwarded_in_total",
            "counter",
            "Requests received from another core.",
            |m| m.forwarded_in.load(Relaxed),
        ),
        (
            "hongbao_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |m| m.connections_accepted.load(Relaxed),
        ),
        (
            "hongbao_connections_open",
            "gauge",
            "Connections open now.",
            |m| m.connections_open.load(Relaxed),
        ),
        (
            "hongbao_recv_nobufs_total",
            "counter",
            "Receives that found every receive buffer in use and were re-armed (io_uring path; \
             raise server.recv_buffers if this grows steadily).",
            |m| m.recv_nobufs.load(Relaxed),
        ),
        (
            "hongbao_net_rings",
            "gauge",
            "io_uring rings holding this core's connections as direct descriptors (one more \
             for each RLIMIT_NOFILE connections; io_uring path).",
            |m| m.net_rings.load(Relaxed),
        ),
        (
            "hongbao_accept_table_full_total",
            "counter",
            "Connections closed by the kernel as they were accepted, because a ring's table of \
             direct descriptors was full (a burst beyond the headroom; io_uring path).",
            |m| m.accept_table_full.load(Relaxed),
        ),
        (
            "hongbao_log_commits_total",
            "counter",
            "Group commits (write + fdatasync).",
            |m| m.commits.load(Relaxed),
        ),
        (
            "hongbao_log_commit_bytes_total",
            "counter",
            "Bytes made durable.",
            |m| m.commit_bytes.load(Relaxed),
        ),
        (
            "hongbao_log_bulk_holds_total",
            "counter",
            "Times bulk records (huge-group messages, fan-out bookkeeping) waited for an urgent \
             commit to ride instead of starting one (store.bulk_hold_us).",
            |m| m.bulk_holds.load(Relaxed),
        ),
        (
            "hongbao_log_disk_microseconds_total",
            "counter",
            "Microseconds spent inside the write and fdatasync calls of group commits; the rest \
             of hongbao_log_commit_seconds is the hand-off to the helper thread and back.",
            |m| m.commit_disk_us.load(Relaxed),
        ),
        (
            "hongbao_tickets_remaining",
            "gauge",
            "Tickets of the open slot this core can still issue.",
            |m| m.tickets_remaining.load(Relaxed),
        ),
        (
            "hongbao_key_list_reloads_total",
            "counter",
            "Key allow/deny list reloads.",
            |m| m.key_list_reloads.load(Relaxed),
        ),
        (
            "hongbao_key_list_errors_total",
            "counter",
            "Key list files that could not be used (old lists kept).",
            |m| m.key_list_errors.load(Relaxed),
        ),
        (
            "hongbao_caps_users",
            "gauge",
            "Users tracked for per-user caps.",
            |m| m.caps_users.load(Relaxed),
        ),
        (
            "hongbao_degraded",
            "gauge",
            "1 while the core sheds load (R10).",
            |m| m.degraded.load(Relaxed),
        ),
        (
            "hongbao_im_sends_total",
            "counter",
            "IM messages accepted from senders homed on this core (retries not counted).",
            |m| m.im_sends.load(Relaxed),
        ),
        (
            "hongbao_im_duplicate_sends_total",
            "counter",
            "IM sends answered from the appinfo memory (retries; nothing stored).",
            |m| m.im_duplicates.load(Relaxed),
        ),
        (
            "hongbao_im_stream_appends_total",
            "counter",
            "Entries appended to the streams of users homed on this core.",
            |m| m.im_stream_appends.load(Relaxed),
        ),
        (
            "hongbao_im_delivery_records_total",
            "counter",
            "Delivery records written (one per message, or per merged run, per core).",
            |m| m.im_delivery_records.load(Relaxed),
        ),
        (
            "hongbao_im_merged_messages_total",
            "counter",
            "Messages that joined another's delivery record (R21 merging).",
            |m| m.im_merged_messages.load(Relaxed),
        ),
        (
            "hongbao_im_held_deliveries_total",
            "counter",
            "Deliveries this core held because its log was behind (written in order once it has room).",
            |m| m.im_held_deliveries.load(Relaxed),
        ),
        (
            "hongbao_im_memory_refused_total",
            "counter",
            "New IM writes refused (busy) while the heap was over im.memory_max_mb.",
            |m| m.im_memory_refused.load(Relaxed),
        ),
        (
            "hongbao_disk_refused_total",
            "counter",
            "Writes refused while the data directory's free space was below \
             store.disk_free_min_mb: opens and new IM writes answered busy, and appends of \
             accepted IM work that waits.",
            |m| m.disk_refused_log.load(Relaxed) + m.disk_refused_im.load(Relaxed),
        ),
        (
            "hongbao_im_streams",
            "gauge",
            "User streams homed on this core.",
            |m| m.im_streams.load(Relaxed),
        ),
        (
            "hongbao_im_pushes_total",
            "counter",
            "Stream growths announced to watching connections (PUSH).",
            |m| m.im_pushes.load(Relaxed),
        ),
        (
            "hongbao_im_expired_entries_total",
            "counter",
            "Stream entries dropped by retention (im.retention_s, R24).",
            |m| m.im_expired.load(Relaxed),
        ),
        (
            "hongbao_im_cooled_entries_total",
            "counter",
            "Stream entries moved out of memory after im.hot_s (R24: only their log positions stay).",
            |m| m.im_cooled.load(Relaxed),
        ),
        (
            "hongbao_im_cold_entries",
            "gauge",
            "Stream entries out of memory now (cold), as of the last retention pass.",
            |m| m.im_cold_entries.load(Relaxed),
        ),
        (
            "hongbao_im_cold_reads_total",
            "counter",
            "Cold stream entries read back from the log (pages of SYNC, receipts, withdrawals, read lists, retried sends).",
            |m| m.im_cold_reads.load(Relaxed),
        ),
        (
            "hongbao_im_cold_read_errors_total",
            "counter",
            "Reads of cold entries that failed (the request was answered unreadable; the server's log says why).",
            |m| m.im_cold_read_errors.load(Relaxed),
        ),
        (
            "hongbao_im_parked_total",
            "counter",
            "Sends accepted while the log was behind and parked for retry (soft failure, R23).",
            |m| m.im_parked.load(Relaxed),
        ),
        (
            "hongbao_im_parked",
            "gauge",
            "Sends parked now, waiting for the log.",
            |m| m.im_parked_now.load(Relaxed),
        ),
        (
            "hongbao_im_appinfo_entries",
            "gauge",
            "Stored sends the appinfo memory holds for retries (24 hours, R18).",
            |m| m.im_appinfo_entries.load(Relaxed),
        ),
        (
            "hongbao_im_deliveries_held",
            "gauge",
            "Delivery records waiting for room in this core's log now.",
            |m| m.im_deliveries_held.load(Relaxed),
        ),
        (
            "hongbao_im_huge_backlog",
            "gauge",
            "Messages to huge groups accepted and durable whose member copies are not all written yet (R21): held behind the group's fan-out in flight or waiting for member-append budget.",
            |m| m.im_huge_backlog.load(Relaxed),
        ),
        (
            "hongbao_im_kept_messages",
            "gauge",
            "Messages held in memory for hot stream entries: one per message per delivery record on this core.",
            |m| m.im_kept_messages.load(Relaxed),
        ),
        (
            "hongbao_im_kept_slots",
            "gauge",
            "Slots in this core's table of kept messages, free ones waiting behind a held one included (20 bytes each); far above hongbao_im_kept_messages means an old hot entry pins the table.",
            |m| m.im_kept_slots.load(Relaxed),
        ),
        (
            "hongbao_im_park_dropped_total",
            "counter",
            "Parked sends dropped after im.park_for_s (never stored; clients resend).",
            |m| m.im_park_dropped.load(Relaxed),
        ),
        (
            "hongbao_im_group_past_memberships",
            "gauge",
            "Memberships that ended which the groups keep for messages sent before (their withdrawals and unread lists), as of the last retention pass.",
            |m| m.im_group_past.load(Relaxed),
        ),
        (
            "hongbao_im_group_history_forgotten_total",
            "counter",
            "Past memberships forgotten because no retained message refers to their versions any more (floor rounds, R24).",
            |m| m.im_history_forgotten.load(Relaxed),
        ),
        (
            "hongbao_im_group_snapshots_total",
            "counter",
            "Group snapshots written to the log so compaction can drop the group change records they cover (R24).",
            |m| m.im_group_snapshots.load(Relaxed),
        ),
        (
            "hongbao_im_work_refused_total",
            "counter",
            "Sends refused busy: the core's, the user's or the tenant's share of work was full.",
            |m| m.im_work_refused.load(Relaxed),
        ),
        (
            "hongbao_log_compactions_total",
            "counter",
            "Expired log segments this core compacted (R24).",
            |m| m.log_compactions.load(Relaxed),
        ),
        (
            "hongbao_log_compacted_bytes_total",
            "counter",
            "Bytes of log these compactions freed.",
            |m| m.log_compacted_bytes.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in simple {
        family(&mut out, name, kind, help);
        for (c, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{c}\"}} {}", get(m));
        }
    }
    family(
        &mut out,
        "hongbao_errors_total",
        "counter",
        "Refused requests, by error code.",
    );
    for (c, m) in cores.iter().enumerate() {
        for (i, e) in ALL_ERRORS.iter().enumerate() {
            let v = m.errors[i].load(Relaxed);
            let _ = writeln!(
                out,
                "hongbao_errors_total{{core=\"{c}\",error=\"{}\"}} {v}",
                e.name()
            );
        }
    }
    histogram(
        &mut out,
        cores,
        "hongbao_log_commit_seconds",
        "Time of one group commit.",
        &COMMIT_BUCKETS_US,
        |m| (&m.commit_buckets[..], m.commit_us_sum.load(Relaxed)),
    );
    histogram(
        &mut out,
        cores,
        "hongbao_im_fanout_seconds",
        "From accepting an IM send to the last recipient copy durable, on the sender's core.",
        &FANOUT_BUCKETS_US,
        |m| (&m.im_fanout_buckets[..], m.im_fanout_us_sum.load(Relaxed)),
    );
    family(
        &mut out,
        "hongbao_heap_bytes",
        "gauge",
        "Heap in use by the whole process (allocated, not freed), in bytes.",
    );
    let _ = writeln!(out, "hongbao_heap_bytes {}", crate::heap::in_use());
    for (name, help, value) in [
        (
            "hongbao_disk_free_bytes",
            "Free space on the data directory's file system, in bytes (checked every 100 ms).",
            process.disk_free_bytes,
        ),
        (
            "hongbao_disk_free_min_bytes",
            "The watermark below which opens and IM writes are refused (store.disk_free_min_mb).",
            process.disk_free_min_bytes,
        ),
        (
            "hongbao_disk_low",
            "1 while the free space is below the watermark: opens and IM writes answered busy.",
            process.disk_low as u64,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_core_and_cumulative_buckets() {
        let a = CoreMetrics::default();
        let b = CoreMetrics::default();
        a.shake(ShakeOutcome::Envelope);
        b.error(ErrorCode::AlreadyClaimed);
        a.commit(100, 90, 80);
        a.commit(100, 400, 300);
        a.commit(100, 1_000_000, 10);
        let text = render(&[&a, &b], &ProcessGauges::default());
        assert!(text.contains("hongbao_shakes_total{core=\"0\",outcome=\"envelope\"} 1"));
        assert!(text.contains("hongbao_errors_total{core=\"1\",error=\"already_claimed\"} 1"));
        assert!(text.contains("hongbao_log_commit_seconds_bucket{core=\"0\",le=\"0.00005\"} 0"));
        assert!(text.contains("hongbao_log_commit_seconds_bucket{core=\"0\",le=\"0.0001\"} 1"));
        assert!(text.contains("hongbao_log_commit_seconds_bucket{core=\"0\",le=\"0.0005\"} 2"));
        assert!(text.contains("hongbao_log_commit_seconds_bucket{core=\"0\",le=\"+Inf\"} 3"));
        b.im_fanout(3_000);
        let text = render(&[&a, &b], &ProcessGauges::default());
        assert!(text.contains("hongbao_im_fanout_seconds_bucket{core=\"1\",le=\"0.002\"} 0"));
        assert!(text.contains("hongbao_im_fanout_seconds_bucket{core=\"1\",le=\"0.005\"} 1"));
        assert!(text.contains("hongbao_im_fanout_seconds_sum{core=\"1\"} 0.003"));
        assert!(text.contains("hongbao_log_commit_seconds_count{core=\"0\"} 3"));
        // Every sample line is "name{labels} value".
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
