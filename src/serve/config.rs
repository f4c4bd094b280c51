//! `hongbao serve` settings: a TOML file (docs/formats/serve-config.md) with every field
//! optional, overridden by command-line flags. Parsed on the main thread before any core starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::admission::PacingConfig;
use crate::shake::caps::CapsConfig;
use crate::store::file::{PENDING_BYTES_DEFAULT, SEGMENT_BYTES_DEFAULT};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub pacing: PacingSection,
    #[serde(default)]
    pub caps: CapsSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub im: ImSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImSection {
    /// Messages older than this many seconds are dropped (R24). Default 180 days.
    pub retention_s: Option<u64>,
    /// Seconds between retention passes (streams trimmed, expired log segments compacted).
    pub compact_every_s: Option<u64>,
    /// Messages stay in memory this many seconds after their send; older ones are cold: only
    /// their log positions stay in memory and reads take them from the log (R24). Default 24 h.
    pub hot_s: Option<u64>,
    /// Sends accepted and not yet durable per core (in flight or parked, R23).
    pub work_max: Option<u32>,
    /// Most of `work_max` one user, or one tenant, may hold (percent).
    pub share_percent: Option<u32>,
    /// A user's tenant is `uid >> tenant_shift` (absent: no tenants).
    pub tenant_shift: Option<u8>,
    /// Seconds a parked send is retried before it is dropped.
    pub park_for_s: Option<u64>,
    /// Heap (MiB, the whole process) above which new IM messages and group changes are
    /// refused as busy, so the server never runs out of memory (default: 1/3 of the RAM;
    /// recovery needs about twice the steady heap for a moment).
    pub memory_max_mb: Option<u64>,
}

/// `im.retention_s` by default: 180 days.
pub const RETENTION_S_DEFAULT: u64 = 180 * 86_400;
/// The free-space watermark when `store.disk_free_min_mb` is not set: 256 MiB, plus what each
/// core may still have waiting for the disk when the watermark is crossed (its
/// `store.pending_bytes`), so that the writes already on their way fit.
pub fn disk_free_min_default(cores: usize, pending_bytes: usize) -> u64 {
    (256 << 20) + cores as u64 * pending_bytes as u64
}

/// `store.bulk_hold_us` by default: bulk records ride the next urgent commit if one comes
/// within 5 ms (docs/ARCHITECTURE.md, "Priority on the disk").
pub const BULK_HOLD_US_DEFAULT: u32 = 5_000;
/// `im.hot_s` by default: a day, the dedupe and withdrawal windows (retried sends, receipts
/// and withdrawals of the day's messages never read the disk).
pub const HOT_S_DEFAULT: u64 = 86_400;
/// `im.compact_every_s` by default: hourly.
pub const COMPACT_EVERY_S_DEFAULT: u64 = 3_600;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// A variant directory written by `gen` (holding manifest.json).
    pub tickets: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub auth_keys: Option<PathBuf>,
    pub key_lists: Option<PathBuf>,
    /// Which host of the plan's topology this server is.
    pub host: Option<String>,
    pub listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub cores: Option<usize>,
    /// CPUs to pin executors to, in core order. Default: the first CPUs the process may use.
    pub cpus: Option<Vec<usize>>,
    /// Shift the event's schedule so this slot (default: the first) starts when the server does.
    pub rehearse_slot: Option<String>,
    pub rehearse: Option<bool>,
    pub connections_max: Option<usize>,
    pub bus_capacity: Option<usize>,
    /// Socket path: "uring" (default) or "glommio".
    pub net: Option<NetPath>,
    /// 4 KiB receive buffers per core shared by its connections on the io_uring path
    /// (a power of two, 1 to 32768).
    pub recv_buffers: Option<u16>,
    /// How long (microseconds) a core runs its tasks before it looks for finished I/O again
    /// (glommio's preemption timer): bounds how long a finished log commit waits to be
    /// answered while the core is saturated. 100 to 100000.
    pub preempt_us: Option<u32>,
    /// How long (microseconds) an idle core keeps polling its network ring before it sleeps
    /// (io_uring path). 0 to 10000.
    pub spin_us: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacingSection {
    pub enabled: Option<bool>,
    pub quota_per_second: Option<u32>,
    pub speed_permille: Option<u32>,
    pub burst_ms: Option<u32>,
    pub sponsor_ppm: Option<u32>,
    pub backoff_ms: Option<u32>,
    pub degrade_backoff_ms: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsSection {
    pub envelopes_per_user: Option<u32>,
    pub min_interval_ms: Option<u32>,
    pub users_max: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub segment_bytes: Option<u64>,
    pub pending_bytes: Option<usize>,
    /// Longest time bulk records (huge-group messages, fan-out bookkeeping) wait for a commit
    /// of urgent ones to ride on, in microseconds (0: never wait).
    pub bulk_hold_us: Option<u32>,
    /// Free space (MiB) on the data directory's file system below which opens and IM writes
    /// are refused busy (default: [`disk_free_min_default`]).
    pub disk_free_min_mb: Option<u64>,
}

/// Everything `serve` runs with, after defaults and overrides.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub tickets: PathBuf,
    pub keyring: PathBuf,
    pub data: PathBuf,
    pub auth_keys: PathBuf,
    pub key_lists: Option<PathBuf>,
    pub host: Option<String>,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub cores: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub rehearse: bool,
    pub rehearse_slot: Option<String>,
    pub connections_max: usize,
    pub bus_capacity: usize,
    pub net: NetPath,
    pub recv_buffers: u16,
    pub preempt_us: u32,
    pub spin_us: u32,
    pub pacing_enabled: bool,
    pub pacing: PacingConfig,
    pub caps: CapsConfig,
    pub segment_bytes: u64,
    pub pending_bytes: usize,
    pub bulk_hold_us: u32,
    /// `store.disk_free_min_mb` in bytes, if set (else [`disk_free_min_default`]).
    pub disk_free_min: Option<u64>,
    pub retention_s: u64,
    /// `im.hot_s`.
    pub hot_s: u64,
    pub compact_every_s: u64,
    pub work: crate::im::engine::WorkLimits,
    /// `im.memory_max_mb`, in bytes.
    pub im_memory_max: u64,
    /// Stop by itself after this long (bounded runs: demos, benchmarks, tests).
    pub run_for: Option<std::time::Duration>,
}

/// How a core does its socket I/O (docs/ARCHITECTURE.md, "Network path").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetPath {
    /// The core's own io_uring: multishot receives into provided buffers, batched sends, no
    /// interrupt per completion. Falls back to `glommio` (with a warning) on kernels before 6.0.
    #[default]
    Uring,
    /// glommio's sockets (a poll and a `recv` per read): the path before the io_uring one,
    /// kept for older kernels and for A/B measurements.
    Glommio,
}

/// Receive buffers per core (x 4 KiB = 8 MiB).
pub const RECV_BUFFERS_DEFAULT: u16 = 2048;
/// glommio's own default is 100 ms: a saturated core then noticed a finished log commit up to
/// 100 ms late, and every open behind it waited (found with `hongbao load`; docs/BENCHMARKS.md).
pub const PREEMPT_US_DEFAULT: u32 = 1000;
/// `server.spin_us` by default: an idle core polls its ring this long before sleeping.
pub const SPIN_US_DEFAULT: u32 = 50;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7700";
pub const HTTP_DEFAULT: &str = "127.0.0.1:7780";
/// Connections per core.
pub const CONNECTIONS_MAX_DEFAULT: usize = 262_144;
/// Messages per (source core, destination core) queue.
pub const BUS_CAPACITY_DEFAULT: usize = 16_384;

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ConfigFile::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a settings file (unknown fields are refused).
    pub fn from_toml(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// Applies defaults; `missing` names required settings that neither file nor flags gave.
    pub fn resolve(self) -> Result<ServeConfig, String> {
        let s = self.server;
        let mut missing = Vec::new();
        let mut need = |v: Option<PathBuf>, name: &str| {
            if v.is_none() {
                missing.push(name.to_string());
            }
            v.unwrap_or_default()
        };
        let tickets = need(s.tickets, "--tickets (server.tickets)");
        let keyring = need(s.keyring, "--keyring (server.keyring)");
        let data = need(s.data, "--data (server.data)");
        let auth_keys = need(s.auth_keys, "--auth-keys (server.auth_keys)");
        if !missing.is_empty() {
            return Err(format!("missing settings: {}", missing.join(", ")));
        }
        let d = PacingConfig::default();
        let p = self.pacing;
        let pacing = PacingConfig {
            quota_per_second: p.quota_per_second.unwrap_or(d.quota_per_second),
            speed_permille: p.speed_permille.unwrap_or(d.speed_permille),
            burst_ms: p.burst_ms.unwrap_or(d.burst_ms),
            sponsor_ppm: p.sponsor_ppm.unwrap_or(d.sponsor_ppm),
            backoff_ms: p.backoff_ms.unwrap_or(d.backoff_ms),
            degrade_backoff_ms: p.degrade_backoff_ms.unwrap_or(d.degrade_backoff_ms),
        };
        if pacing.sponsor_ppm > 1_000_000 {
            return Err(format!(
                "pacing.sponsor_ppm = {} is above 1,000,000 (parts per million)",
                pacing.sponsor_ppm
            ));
        }
        let dc = CapsConfig::default();
        let caps = CapsConfig {
            envelopes_per_user: self
                .caps
                .envelopes_per_user
                .unwrap_or(dc.envelopes_per_user),
            min_interval_ms: self.caps.min_interval_ms.unwrap_or(dc.min_interval_ms),
            users_max: self.caps.users_max.unwrap_or(dc.users_max),
        };
        if s.cores == Some(0) {
            return Err("cores must be at least 1".into());
        }
        let segment_bytes = self.store.segment_bytes.unwrap_or(SEGMENT_BYTES_DEFAULT);
        if !(4 << 20..=4 << 30).contains(&segment_bytes) {
            return Err(format!(
                "store.segment_bytes = {segment_bytes} is not between 4 MiB and 4 GiB"
            ));
        }
        let retention_s = self.im.retention_s.unwrap_or(RETENTION_S_DEFAULT);
        if retention_s == 0 {
            return Err("im.retention_s must be at least 1".into());
        }
        let hot_s = self.im.hot_s.unwrap_or(HOT_S_DEFAULT);
        if hot_s == 0 {
            return Err("im.hot_s must be at least 1".into());
        }
        let dw = crate::im::engine::WorkLimits::default();
        let work = crate::im::engine::WorkLimits {
            work_max: self.im.work_max.unwrap_or(dw.work_max),
            share_percent: self.im.share_percent.unwrap_or(dw.share_percent),
            tenant_shift: self.im.tenant_shift.or(dw.tenant_shift),
            park_for_ms: self
                .im
                .park_for_s
                .map_or(dw.park_for_ms, |s| s.saturating_mul(1000)),
        };
        if work.work_max == 0 || !(1..=100).contains(&work.share_percent) {
            return Err(format!(
                "im.work_max = {} must be at least 1 and im.share_percent = {} from 1 to 100",
                work.work_max, work.share_percent
            ));
        }
        if work.tenant_shift.is_some_and(|s| s > 63) {
            return Err("im.tenant_shift must be from 0 to 63".into());
        }
        let im_memory_max = match self.im.memory_max_mb {
            Some(0) => return Err("im.memory_max_mb must be at least 1".into()),
            Some(mb) => mb.saturating_mul(1 << 20),
            None => crate::heap::mem_total().map_or(8 << 30, |b| b / 3),
        };
        let compact_every_s = self.im.compact_every_s.unwrap_or(COMPACT_EVERY_S_DEFAULT);
        if !(1..=86_400).contains(&compact_every_s) {
            return Err(format!(
                "im.compact_every_s = {compact_every_s} must be from 1 to 86400"
            ));
        }
        let recv_buffers = s.recv_buffers.unwrap_or(RECV_BUFFERS_DEFAULT);
        if !recv_buffers.is_power_of_two() || recv_buffers > 32_768 {
            return Err(format!(
                "server.recv_buffers = {recv_buffers} must be a power of two from 1 to 32768"
            ));
        }
        let preempt_us = s.preempt_us.unwrap_or(PREEMPT_US_DEFAULT);
        if !(100..=100_000).contains(&preempt_us) {
            return Err(format!(
                "server.preempt_us = {preempt_us} must be from 100 to 100000"
            ));
        }
        let spin_us = s.spin_us.unwrap_or(SPIN_US_DEFAULT);
        if spin_us > 10_000 {
            return Err(format!(
                "server.spin_us = {spin_us} must be from 0 to 10000"
            ));
        }
        let bulk_hold_us = self.store.bulk_hold_us.unwrap_or(BULK_HOLD_US_DEFAULT);
        if bulk_hold_us > 100_000 {
            return Err(format!(
                "store.bulk_hold_us = {bulk_hold_us} must be at most 100000 (0 turns holding off)"
            ));
        }
        let pending_bytes = self.store.pending_bytes.unwrap_or(PENDING_BYTES_DEFAULT);
        if pending_bytes < 64 << 10 {
            return Err(format!(
                "store.pending_bytes = {pending_bytes} is below 64 KiB"
            ));
        }
        Ok(ServeConfig {
            tickets,
            keyring,
            data,
            auth_keys,
            key_lists: s.key_lists,
            host: s.host,
            listen: s.listen.unwrap_or(LISTEN_DEFAULT.parse().expect("valid")),
            http: s.http.unwrap_or(HTTP_DEFAULT.parse().expect("valid")),
            cores: s.cores,
            cpus: s.cpus,
            rehearse: s.rehearse.unwrap_or(false) || s.rehearse_slot.is_some(),
            rehearse_slot: s.rehearse_slot,
            connections_max: s.connections_max.unwrap_or(CONNECTIONS_MAX_DEFAULT).max(1),
            bus_capacity: s.bus_capacity.unwrap_or(BUS_CAPACITY_DEFAULT).max(64),
            net: s.net.unwrap_or_default(),
            recv_buffers,
            preempt_us,
            spin_us,
            pacing_enabled: p.enabled.unwrap_or(true),
            pacing,
            caps,
            segment_bytes,
            pending_bytes,
            bulk_hold_us,
            disk_free_min: self
                .store
                .disk_free_min_mb
                .map(|mb| mb.saturating_mul(1 << 20)),
            retention_s,
            hot_s,
            compact_every_s,
            work,
            im_memory_max,
            run_for: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_missing_settings() {
        let e = ConfigFile::default().resolve().unwrap_err();
        assert!(e.contains("--tickets") && e.contains("--auth-keys"), "{e}");
        let file: ConfigFile = toml::from_str(
            r#"
            [server]
            tickets = "t"
            keyring = "k"
            data = "d"
            auth_keys = "a"
            [caps]
            envelopes_per_user = 3
            "#,
        )
        .unwrap();
        let c = file.resolve().unwrap();
        assert_eq!(c.caps.envelopes_per_user, 3);
        assert_eq!(c.listen.to_string(), LISTEN_DEFAULT);
        assert!(c.pacing_enabled && !c.rehearse);
    }

    /// The required settings plus `extra`, resolved.
    fn resolve(extra: &str) -> Result<ServeConfig, String> {
        let base = "[server]\ntickets = \"t\"\nkeyring = \"k\"\ndata = \"d\"\nauth_keys = \"a\"\n";
        toml::from_str::<ConfigFile>(&format!("{base}{extra}"))
            .unwrap()
            .resolve()
    }

    #[test]
    fn the_im_memory_limit_defaults_to_a_third_of_the_ram_and_refuses_zero() {
        let ram = crate::heap::mem_total().unwrap();
        assert_eq!(resolve("").unwrap().im_memory_max, ram / 3);
        let c = resolve("[im]\nmemory_max_mb = 512\n").unwrap();
        assert_eq!(c.im_memory_max, 512 << 20);
        let e = resolve("[im]\nmemory_max_mb = 0\n").unwrap_err();
        assert!(e.contains("im.memory_max_mb"), "{e}");
    }

    #[test]
    fn timing_settings_are_bounded() {
        let c = resolve("").unwrap();
        assert_eq!(
            (c.preempt_us, c.spin_us),
            (PREEMPT_US_DEFAULT, SPIN_US_DEFAULT)
        );
        assert_eq!(resolve("spin_us = 0\n").unwrap().spin_us, 0);
        let e = resolve("spin_us = 10001\n").unwrap_err();
        assert!(e.contains("server.spin_us = 10001"), "{e}");
        let e = resolve("preempt_us = 50\n").unwrap_err();
        assert!(e.contains("server.preempt_us = 50"), "{e}");
        assert_eq!(c.bulk_hold_us, BULK_HOLD_US_DEFAULT);
        let off = resolve("[store]\nbulk_hold_us = 0\n").unwrap();
        assert_eq!(off.bulk_hold_us, 0);
        let e = resolve("[store]\nbulk_hold_us = 100001\n").unwrap_err();
        assert!(e.contains("store.bulk_hold_us = 100001"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<ConfigFile>("[server]\nlisten_addr = \"x\"").unwrap_err();
        assert!(e.message().contains("unknown field"), "{e}");
    }
}
