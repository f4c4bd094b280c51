//! Start-up of `hongbao serve`, on the main thread before any core runs: checks that tickets,
//! keyring, data directory and key files belong together; recovers every per-core log (torn
//! tails cut, mid-log damage refused with file and offset); replays them into the ledgers of all
//! of this host's shards and into the per-user caps; and hands each core its shards, its log
//! writer and its users.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zerocopy::FromBytes;

use super::config::ServeConfig;
use super::keys::{load_key_file, load_or_create_key_file};
use crate::ledger::{ClaimRecord, ReservationRecord, ShardLedger, KIND_CLAIM, KIND_RESERVATION};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::metrics::CoreMetrics;
use crate::shake::caps::UserCaps;
use crate::shake::engine::{EngineParts, OwnedShard, SlotWindow};
use crate::store::{FileLog, LogWriter, StoreOptions};
use crate::ticket::lists::KeyLists;
use crate::ticket::{EnvelopeId, Keyring, ShardFile};
use crate::token::TokenKeys;

pub const EVENT_FILE: &str = "event.json";
pub const TOKEN_KEYS_FILE: &str = "token.keys";

/// What a data directory belongs to (`<data>/event.json`): a log of one event, variant,
/// generation and host must never be replayed against another's tickets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataIdentity {
    pub format: String,
    pub event: String,
    pub variant: String,
    pub generation: String,
    pub host: String,
}

const DATA_FORMAT: &str = "hongbao-data-1";

/// Home core of a user: where the user's shakes are decided and caps kept.
pub fn home_core(uid: u64, cores: usize) -> usize {
    (((uid.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) % cores as u64) as usize
}

/// One core's share of the server.
pub struct CoreSetup {
    pub parts: EngineParts,
    /// The core's IM state, rebuilt from every core's log.
    pub im: crate::im::ImCore,
    pub log_dir: PathBuf,
}

/// Everything the cores share read-only, and each core's setup.
pub struct Prepared {
    pub cores: Vec<CoreSetup>,
    pub keyring: Keyring,
    pub auth_keys: TokenKeys,
    pub token_keys: TokenKeys,
    pub key_lists: KeyLists,
    /// Shard ordinal -> owning core.
    pub owner: foldhash::HashMap<u32, u16>,
    pub metrics: Vec<Arc<CoreMetrics>>,
    pub host: String,
    pub event: String,
    pub slots: Vec<SlotWindow>,
    /// Lines for the operator: what recovery found, warnings.
    pub report: Vec<String>,
    /// The data directory's lock (`<data>/lock`), held while the server runs.
    pub data_lock: std::fs::File,
}

fn parse_ms(text: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("time {text:?}: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("time {text:?} is before 1970"))
}

/// Wall-clock microseconds since the Unix epoch (IM timing; sent_ms is this / 1000).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() * 1_000_000 + u64::from(d.subsec_micros()))
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // Not `as_millis`: its u128 division shows in profiles of the request path.
        .map(|d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
        .unwrap_or(0)
}

/// Which record of the money kinds names which shard.
fn record_shard(kind: u8, payload: &[u8]) -> Option<Result<u32, String>> {
    match kind {
        KIND_RESERVATION => Some(
            ReservationRecord::read_from_bytes(payload)
                .map(|r| r.shard_ordinal.get())
                .map_err(|_| format!("reservation record of {} bytes", payload.len())),
        ),
        KIND_CLAIM => Some(
            ClaimRecord::read_from_bytes(payload)
                .map(|c| EnvelopeId(c.envelope_id.get()).shard_ordinal())
                .map_err(|_| format!("claim record of {} bytes", payload.len())),
        ),
        _ => None,
    }
}

pub fn prepare(config: &ServeConfig, available_cpus: usize) -> Result<Prepared, String> {
    let mut report = Vec::new();
    let manifest_path = config.tickets.join(MANIFEST_FILE);
    let manifest = Manifest::load(&manifest_path).map_err(|e| {
        format!("{e}\n  (--tickets must be a variant directory written by `hongbao gen`, holding {MANIFEST_FILE})")
    })?;
    let (keyring, keyring_open) = Keyring::load(&config.keyring).map_err(|e| e.to_string())?;
    if keyring_open {
        report.push(format!(
            "warning: {} is readable by other users; chmod 600 it",
            config.keyring.display()
        ));
    }
    if hex::encode(keyring.generation) != manifest.generation {
        return Err(format!(
            "{} is not the keyring of the tickets in {} (generation {} vs {})",
            config.keyring.display(),
            config.tickets.display(),
            hex::encode(keyring.generation),
            manifest.generation
        ));
    }
    let (auth_keys, auth_open) = load_key_file(&config.auth_keys).map_err(|e| e.to_string())?;
    if auth_open {
        report.push(format!(
            "warning: {} is readable by other users; chmod 600 it",
            config.auth_keys.display()
        ));
    }
    let key_lists = match &config.key_lists {
        Some(path) => KeyLists::load(path).map_err(|e| e.to_string())?,
        None => KeyLists::default(),
    };

    // Host and cores.
    let mut hosts: Vec<&str> = manifest.shards.iter().map(|s| s.host.as_str()).collect();
    hosts.sort();
    hosts.dedup();
    let host = match &config.host {
        Some(h) if hosts.contains(&h.as_str()) => h.clone(),
        Some(h) => {
            return Err(format!(
                "host {h:?} is not in the plan's topology (hosts: {})",
                hosts.join(", ")
            ))
        }
        None if hosts.len() == 1 => hosts[0].to_string(),
        None => hosts[0].to_string(),
    };
    if config.host.is_none() && hosts.len() > 1 {
        report.push(format!(
            "serving host {host:?} (the plan has {}; choose with --host)",
            hosts.join(", ")
        ));
    }
    let host_shards: Vec<_> = manifest.shards.iter().filter(|s| s.host == host).collect();
    let plan_cores = host_shards
        .iter()
        .map(|s| s.core as usize + 1)
        .max()
        .unwrap_or(1);
    let cores = match config.cores {
        Some(n) if n > plan_cores => {
            return Err(format!(
                "--cores {n}: the plan gives host {host:?} {plan_cores} core(s), one ticket file each; \
                 run with --cores {plan_cores} or fewer (or generate for more cores)"
            ))
        }
        Some(n) => n,
        None => plan_cores.min(available_cpus.max(1)),
    };
    if cores > u16::MAX as usize {
        return Err("too many cores".into());
    }

    // Slots, shifted for a rehearsal.
    let mut slots = Vec::with_capacity(manifest.slots.len());
    for s in &manifest.slots {
        slots.push(SlotWindow {
            name: s.name.clone(),
            start_ms: parse_ms(&s.start)?,
            end_ms: parse_ms(&s.end)?,
        });
    }
    if config.rehearse {
        let anchor = match &config.rehearse_slot {
            Some(name) => slots.iter().position(|s| &s.name == name).ok_or_else(|| {
                format!(
                    "slot {name:?} is not in the plan (slots: {})",
                    slots
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
            None => 0,
        };
        let start = slots[anchor].start_ms;
        let now = now_ms();
        for s in &mut slots {
            // Every slot moves by the same amount, so gaps and order are kept.
            s.start_ms = (s.start_ms + now).saturating_sub(start);
            s.end_ms = (s.end_ms + now).saturating_sub(start);
        }
        report.push(format!(
            "rehearsal: slot {:?} starts now and lasts {} s",
            slots[anchor].name,
            (slots[anchor].end_ms - slots[anchor].start_ms) / 1000
        ));
    }

    // Data directory identity and token keys.
    std::fs::create_dir_all(&config.data).map_err(|e| format!("{}: {e}", config.data.display()))?;
    let data_lock = lock_data_dir(&config.data)?;
    let identity = DataIdentity {
        format: DATA_FORMAT.into(),
        event: manifest.event.clone(),
        variant: manifest.variant.clone(),
        generation: manifest.generation.clone(),
        host: host.clone(),
    };
    let event_path = config.data.join(EVENT_FILE);
    match std::fs::read_to_string(&event_path) {
        Ok(text) => {
            let found: DataIdentity = serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", event_path.display()))?;
            if found != identity {
                return Err(format!(
                    "{} belongs to event {:?} variant {} generation {} host {:?}, not to the tickets \
                     being served (event {:?} variant {} generation {} host {:?}); use another --data \
                     directory: a log must never be replayed against other tickets",
                    config.data.display(),
                    found.event,
                    found.variant,
                    found.generation,
                    found.host,
                    identity.event,
                    identity.variant,
                    identity.generation,
                    identity.host
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut text = serde_json::to_string_pretty(&identity).expect("serializes");
            text.push('\n');
            crate::fsutil::write_atomic(&event_path, text.as_bytes())
                .map_err(|e| crate::fsutil::describe_write_error(&event_path, &e))?;
        }
        Err(e) => return Err(format!("{}: {e}", event_path.display())),
    }
    // Absolute: glommio resolves relative paths against its own directory descriptor.
    let data = std::fs::canonicalize(&config.data)
        .map_err(|e| format!("{}: {e}", config.data.display()))?;
    let token_keys =
        load_or_create_key_file(&data.join(TOKEN_KEYS_FILE)).map_err(|e| e.to_string())?;

    // Shards of this host, and their ledgers.
    let mut ledgers: HashMap<u32, ShardLedger> = HashMap::new();
    let mut files: Vec<(u32, usize, usize, ShardFile)> = Vec::new(); // ordinal, slot, owner, file
    for entry in &host_shards {
        let path = config.tickets.join(&entry.path);
        let file = ShardFile::open(&path).map_err(|e| e.to_string())?;
        let h = file.header();
        if hex::encode(h.generation) != manifest.generation
            || h.shard_ordinal.get() != entry.ordinal
            || h.record_count.get() != entry.envelopes
        {
            return Err(format!(
                "{}: header does not match the manifest (generation, ordinal or count); \
                 run `hongbao verify`",
                path.display()
            ));
        }
        let slot = manifest
            .slots
            .iter()
            .position(|s| s.name == entry.slot)
            .ok_or_else(|| {
                format!(
                    "{}: slot {:?} not in the manifest",
                    path.display(),
                    entry.slot
                )
            })?;
        let tickets = u32::try_from(entry.envelopes)
            .map_err(|_| format!("{}: too many tickets", path.display()))?;
        ledgers.insert(entry.ordinal, ShardLedger::new(entry.ordinal, tickets));
        files.push((entry.ordinal, slot, entry.core as usize % cores, file));
    }

    // Recover every core log present (also of cores no longer run), replaying into ledgers.

    let mut claims_by_uid: HashMap<u64, u32> = HashMap::new();
    let mut im = crate::im::ImRecovery::with_hot_cutoff(
        now_ms().saturating_sub(config.hot_s.saturating_mul(1000)),
        now_ms(),
    );
    let mut writers: Vec<Option<LogWriter>> = (0..cores).map(|_| None).collect();
    let present: Vec<u16> = crate::claims::core_dirs(&data)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let (logs, adopt) = super::cores::prepare(&data, &present, cores)?;
    let options = StoreOptions {
        segment_bytes_max: config.segment_bytes,
        pending_bytes_max: config.pending_bytes,
        adopt,
    };
    for k in logs {
        let dir = core_dir(&data, k);
        let mut failure: Option<String> = None;
        let (log, recovery) = FileLog::open(&dir, k, options, |position, view| {
            if failure.is_some() {
                return;
            }
            if crate::im::ImRecovery::is_im(view.kind) {
                let at = crate::im::cold::ColdRef::new(k, position);
                if let Err(e) = im.replay(view.kind, view.stream, view.seq, view.payload, at) {
                    failure = Some(format!("{}: IM record at {position}: {e}", dir.display()));
                }
                return;
            }
            let Some(shard) = record_shard(view.kind, view.payload) else {
                return;
            };
            let result = shard.and_then(|ordinal| {
                let ledger = ledgers.get_mut(&ordinal).ok_or_else(|| {
                    format!("names shard {ordinal}, which this host does not serve")
                })?;
                ledger
                    .replay(view.kind, view.payload)
                    .map_err(|e| e.to_string())?;
                if view.kind == KIND_CLAIM {
                    let c = ClaimRecord::read_from_bytes(view.payload).expect("checked");
                    *claims_by_uid.entry(c.uid.get()).or_default() += 1;
                }
                Ok(())
            });
            if let Err(e) = result {
                failure = Some(format!("{}: record at {position}: {e}", dir.display()));
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(f) = failure {
            return Err(format!(
                "{f}; refusing to start (docs/SAFETY.md, \"Recovery\")"
            ));
        }
        if recovery.records > 0 || recovery.truncated.is_some() {
            report.push(format!(
                "core-{k}: recovered {} records in {} segment(s), resuming at {}",
                recovery.records, recovery.segments, recovery.end
            ));
        }
        if recovery.adopted {
            report.push(format!(
                "core-{k}: the log was written by a build without log state files; its \
                 segments and end are recorded now and checked from the next start on"
            ));
        }
        if recovery.clean == Some(false) {
            report.push(format!(
                "core-{k}: the last stop was not clean (a crash or kill -9); its end is checked \
                 by checksums alone (docs/SAFETY.md)"
            ));
        }
        if let Some((path, offset, bytes, reason)) = &recovery.truncated {
            report.push(format!(
                "core-{k}: cut a torn tail of {bytes} bytes at offset {offset} of {} ({reason}); \
                 nothing in it was acknowledged",
                path.display()
            ));
        }
        if (k as usize) < cores {
            writers[k as usize] = Some(log.into_writer());
        }
    }

    // Hand out shards, users and writers.
    let metrics: Vec<Arc<CoreMetrics>> = (0..cores)
        .map(|_| Arc::new(CoreMetrics::default()))
        .collect();
    let mut owner = foldhash::HashMap::default();
    let mut per_core: Vec<Vec<OwnedShard>> = (0..cores).map(|_| Vec::new()).collect();
    for (ordinal, slot, core, file) in files {
        owner.insert(ordinal, core as u16);
        let ledger = ledgers.remove(&ordinal).expect("one ledger per shard");
        per_core[core].push(OwnedShard { file, ledger, slot });
    }
    let mut caps: Vec<UserCaps> = (0..cores).map(|_| UserCaps::new(config.caps)).collect();
    for (uid, n) in claims_by_uid {
        caps[home_core(uid, cores)].restore(uid, n);
    }
    let seed = {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| format!("random seed: {e}"))?;
        u64::from_le_bytes(b)
    };
    let im_cores = im
        .finish(
            cores as u16,
            now_ms(),
            now_ms().saturating_sub(config.retention_s.saturating_mul(1000)),
        )
        .map_err(|e| format!("IM state of the logs: {e}; refusing to start (docs/SAFETY.md)"))?;
    let mut im_cores = im_cores;
    for im in &mut im_cores {
        im.set_limits(config.work);
    }
    let mut setups = Vec::with_capacity(cores);
    for (k, (((shards, caps), writer), im)) in per_core
        .into_iter()
        .zip(caps)
        .zip(writers)
        .zip(im_cores)
        .enumerate()
    {
        let mut im = im;
        im.set_cold_source(Box::new(crate::im::cold::ColdFiles::new(data.clone())));
        setups.push(CoreSetup {
            im,
            parts: EngineParts {
                core: k as u16,
                slots: slots.clone(),
                shards,
                log: writer.expect("every running core has a log"),
                token_keys: token_keys.clone(),
                pacing: config.pacing,
                pacing_enabled: config.pacing_enabled,
                caps,
                seed: seed.wrapping_add(k as u64),
                metrics: metrics[k].clone(),
            },
            log_dir: core_dir(&data, k as u16),
        });
    }
    Ok(Prepared {
        cores: setups,
        keyring,
        auth_keys,
        token_keys,
        key_lists,
        owner,
        metrics,
        host,
        event: manifest.event.clone(),
        slots,
        report,
        data_lock,
    })
}

/// The lock file of a data directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the data directory's exclusive lock (flock on `<data>/lock`, which then holds this
/// process's id): one server per data directory. Two would each replay the same log into their
/// own cursors and bitmaps and append to the same files, issuing tickets twice. The kernel
/// drops the lock when the process ends, however it ends, so a restart after kill -9 is free
/// to take it.
pub fn lock_data_dir(data: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = data.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "{} is in use by another hongbao serve{}: one server per data directory (two \
                 would issue the same tickets twice); stop it, or use another --data directory",
                data.display(),
                match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                }
            ));
        }
        return Err(format!("locking {}: {err}", path.display()));
    }
    // The pid is for the operator; the lock is what counts. On a full disk it may not be
    // written, and the server goes on to say what it can and cannot do.
    let _ = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// The directory of a core's log.
pub fn core_dir(data: &Path, core: u16) -> PathBuf {
    data.join(format!("core-{core}"))
}
