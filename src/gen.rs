//! `hongbao gen`: turns a validated plan into ticket shard files, a keyring, batch configs and
//! manifests (R1-R6).
//!
//! Runs on a pool of plain threads (one per CPU by default), one shard file at a time per
//! thread. Each thread streams its file: sponsor interleave, amount split, AES sealing in
//! batches, buffered writes. Memory per thread is a few MiB whatever the event size.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use zerocopy::little_endian::{I64, U16, U32, U64};

use crate::manifest::{
    BatchConfig, BatchEntry, KeyTotal, Manifest, MerchantTotal, ShardEntry, SlotTotal,
    BATCHES_FILE, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, PLAN_COPY_FILE,
};
use crate::plan::{hex, Allocation, Plan, PlanError, ShardPlan};
use crate::progress::Progress;
use crate::ticket::shard::{ShardHeader, HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION};
use crate::ticket::{
    EnvelopeId, KeyEntry, Keyring, KeyringError, SecretBlock, ShardError, ShardWriter, Ticket,
    TicketRecord, RECORD_BYTES,
};

/// Records sealed and written per batch: one AES call and one buffered write per chunk.
const CHUNK_RECORDS: usize = 4096;

/// What `gen` was asked to do.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub out: PathBuf,
    pub keyring: PathBuf,
    /// Master seed for amounts and order; `None` draws one from the OS.
    pub seed: Option<u64>,
    pub threads: usize,
    /// Replace an earlier generation in `out` and an existing keyring.
    pub force: bool,
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct VariantSummary {
    pub name: String,
    pub dir: PathBuf,
    pub envelopes: u64,
    pub amount_cents: u64,
    pub shards: usize,
    pub keys: usize,
}

#[derive(Debug, Clone)]
pub struct GenSummary {
    pub variants: Vec<VariantSummary>,
    pub keyring: PathBuf,
    pub seed: u64,
    pub envelopes: u64,
    pub seconds: f64,
    pub threads: usize,
}

/// Why generation stopped. Nothing is left under a final name when it fails: shard files
/// are published by rename and the keyring is written last.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The output location is unusable (not empty, keyring inside it, not writable, ...).
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The OS random source failed; no key can be made safely.
    #[error("cannot read OS randomness for keys: {0}")]
    Random(String),
}

/// One file's outcome: its header and the keys it used.
struct ShardOutput {
    header: ShardHeader,
    keys: Vec<KeyEntry>,
    key_totals: Vec<KeyTotal>,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The seed of one shard file's random stream: distinct per file of every variant.
pub use crate::draws::shard_seed;

/// Generates every variant of `plan` into `opts.out` and writes the keyring.
pub fn generate(plan: &Plan, opts: &GenOptions) -> Result<GenSummary, GenError> {
    let started = Instant::now();
    let allocations = plan.allocate()?;
    prepare_output(plan, opts)?;
    let seed = match opts.seed {
        Some(s) => s,
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| GenError::Random(e.to_string()))?;
            u64::from_le_bytes(bytes)
        }
    };
    let created = now_unix();
    let mut generation = [0u8; 16];
    getrandom::fill(&mut generation).map_err(|e| GenError::Random(e.to_string()))?;
    let jobs: Vec<(&Allocation, &ShardPlan)> = allocations
        .iter()
        .flat_map(|a| a.shards.iter().map(move |s| (a, s)))
        .collect();
    let total: u64 = jobs.iter().map(|(_, s)| s.count).sum();
    // Largest files first so the pool finishes together.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].1.count));

    let progress = Progress::new(opts.progress, total, "tickets");
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outputs: Vec<Mutex<Option<Result<ShardOutput, GenError>>>> =
        (0..jobs.len()).map(|_| Mutex::new(None)).collect();
    let threads = opts.threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= order.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let (allocation, shard) = jobs[order[n]];
                let dir = opts.out.join(&plan.variants[allocation.variant].name);
                let path = dir.join(shard.relative_path(plan));
                let result =
                    generate_shard(plan, shard, &path, seed, generation, &progress, &failed);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *outputs[order[n]]
                    .lock()
                    .expect("no thread panics holding it") = Some(result);
            });
        }
    });
    progress.finish();

    let mut results = Vec::with_capacity(jobs.len());
    for slot in outputs {
        match slot.into_inner().expect("no thread panics holding it") {
            Some(Ok(out)) => results.push(out),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(GenError::Output {
                    path: opts.out.clone(),
                    message: "generation stopped early after another file failed".into(),
                })
            }
        }
    }

    let mut keys = Vec::new();
    let mut variants = Vec::new();
    let mut first = 0;
    for allocation in &allocations {
        let outs = &results[first..first + allocation.shards.len()];
        first += allocation.shards.len();
        let summary = write_variant_metadata(plan, allocation, outs, opts, created, generation)?;
        variants.push(summary);
        for out in outs {
            keys.extend(out.keys.iter().cloned());
        }
    }
    let keyring = Keyring::new(plan.fingerprint, seed, keys)?.with_generation(generation);
    keyring.save(&opts.keyring, created, opts.force)?;
    write_big_lists(plan, opts, &keyring, generation)?;
    Ok(GenSummary {
        variants,
        keyring: opts.keyring.clone(),
        seed,
        envelopes: total,
        seconds: started.elapsed().as_secs_f64(),
        threads,
    })
}

/// The big-envelope list of every variant, beside the keyring (docs/formats/big.md).
fn write_big_lists(
    plan: &Plan,
    opts: &GenOptions,
    keyring: &Keyring,
    generation: [u8; 16],
) -> Result<(), GenError> {
    for variant in &plan.variants {
        let dir = opts.out.join(&variant.name);
        let path = crate::big::list_path(&opts.keyring, &variant.name);
        let output = |message: String| GenError::Output {
            path: path.clone(),
            message,
        };
        let manifest = Manifest::load(&dir.join(crate::manifest::MANIFEST_FILE))
            .map_err(|e| output(e.to_string()))?;
        let list = crate::big::select(
            &dir,
            &manifest,
            keyring,
            generation,
            plan.big_envelope_percent,
        )
        .map_err(output)?;
        crate::big::save(&list, &path).map_err(output)?;
    }
    Ok(())
}

/// Refuses to mix a new generation into an old one or to put keys next to tickets (R5).
fn prepare_output(plan: &Plan, opts: &GenOptions) -> Result<(), GenError> {
    let output = |path: &Path, message: String| GenError::Output {
        path: path.to_path_buf(),
        message,
    };
    // Every check first, on paths resolved without creating anything: a refusal leaves no
    // empty directory behind.
    let out = resolved(&opts.out).map_err(|e| output(&opts.out, e.to_string()))?;
    let keyring_parent = opts
        .keyring
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let keyring_dir =
        resolved(keyring_parent).map_err(|e| output(keyring_parent, e.to_string()))?;
    if keyring_dir.starts_with(&out) {
        return Err(output(
            &opts.keyring,
            format!(
                "the keyring would be inside the ticket directory {}; keys are kept apart from \
                 ticket files (R5): choose a --keyring path outside it",
                opts.out.display()
            ),
        ));
    }
    if opts.keyring.exists() && !opts.force {
        return Err(KeyringError::Exists(opts.keyring.clone()).into());
    }
    for variant in &plan.variants {
        let dir = opts.out.join(&variant.name);
        if !dir.exists() {
            continue;
        }
        let ours = dir.join(MANIFEST_FILE).exists() || dir.join(PLAN_COPY_FILE).exists();
        let empty = fs::read_dir(&dir)
            .map_err(|e| output(&dir, e.to_string()))?
            .next()
            .is_none();
        if empty {
            continue;
        }
        if !opts.force {
            return Err(output(
                &dir,
                "already holds files; generate into an empty directory, or pass --force to \
                 replace an earlier generation"
                    .into(),
            ));
        }
        if !ours {
            return Err(output(
                &dir,
                "holds files that are not an earlier hongbao generation; refusing to delete them \
                 even with --force"
                    .into(),
            ));
        }
    }
    // Checked: now the directories are made, and an earlier generation replaced (--force).
    for variant in &plan.variants {
        let dir = opts.out.join(&variant.name);
        if dir.exists() && fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            fs::remove_dir_all(&dir).map_err(|e| output(&dir, e.to_string()))?;
        }
    }
    fs::create_dir_all(&opts.out).map_err(|e| output(&opts.out, e.to_string()))?;
    crate::fsutil::create_private_dir_all(keyring_parent)
        .map_err(|e| output(keyring_parent, e.to_string()))?;
    Ok(())
}

/// `path` made absolute, with the links of the part that exists resolved, without creating
/// anything (so two paths can be compared before either directory is made).
fn resolved(path: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    while !existing.exists() {
        let Some(parent) = existing.parent() else {
            break;
        };
        missing.extend(existing.components().next_back());
        existing = parent;
    }
    let mut out = fs::canonicalize(existing)?;
    for c in missing.into_iter().rev() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Streams one shard file: interleave, split, seal in chunks, write, publish.
fn generate_shard(
    plan: &Plan,
    shard: &ShardPlan,
    path: &Path,
    master_seed: u64,
    generation: [u8; 16],
    progress: &Progress,
    failed: &AtomicBool,
) -> Result<ShardOutput, GenError> {
    let mut writer = ShardWriter::create(path)?;
    match fill_shard(plan, shard, &mut writer, master_seed, progress, failed) {
        Ok((keys, key_totals)) => {
            let host = &plan.hosts[shard.host];
            let slot = &plan.slots[shard.slot];
            let mut fingerprint = [0u8; 16];
            fingerprint.copy_from_slice(&plan.fingerprint[..16]);
            let header = ShardHeader {
                magic: SHARD_MAGIC,
                version: U16::new(SHARD_VERSION),
                header_bytes: U16::new(HEADER_BYTES as u16),
                record_bytes: U16::new(RECORD_BYTES as u16),
                variant: shard.variant as u8,
                reserved0: 0,
                shard_ordinal: U32::new(shard.ordinal),
                slot_index: U16::new(shard.slot as u16),
                host_index: U16::new(shard.host as u16),
                core: U16::new(shard.core as u16),
                backup_host_index: U16::new(host.backup as u16),
                record_count: U64::new(0),
                amount_cents: U64::new(shard.amount_cents),
                plan_fingerprint: fingerprint,
                slot_start_unix: I64::new(slot.start_unix),
                slot_end_unix: I64::new(slot.end_unix),
                body_crc32c: U32::new(0),
                generation,
                reserved1: [0; 28],
                header_crc32c: U32::new(0),
            };
            let header = writer.finish(header)?;
            assert_eq!(header.record_count.get(), shard.count, "record count");
            Ok(ShardOutput {
                header,
                keys,
                key_totals,
            })
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

fn fill_shard(
    plan: &Plan,
    shard: &ShardPlan,
    writer: &mut ShardWriter,
    master_seed: u64,
    progress: &Progress,
    failed: &AtomicBool,
) -> Result<(Vec<KeyEntry>, Vec<KeyTotal>), GenError> {
    let mut draws = crate::draws::Draws::new(shard, master_seed);
    let cap = plan.key_cap_cents;
    let key_end = shard.key_first as u32 + shard.key_reserved as u32;

    let mut records: Vec<TicketRecord> = Vec::with_capacity(CHUNK_RECORDS);
    let mut blocks: Vec<Block> = Vec::with_capacity(CHUNK_RECORDS);
    let mut keys: Vec<KeyEntry> = Vec::new();
    let mut key_totals: Vec<KeyTotal> = Vec::new();
    let mut cipher: Option<Aes128> = None;
    let mut key_money: u64 = 0;
    let mut index: u32 = 0;
    let mut written_cents: u64 = 0;

    for (part, amount) in draws.by_ref() {
        if cipher.is_none() || key_money + amount > cap {
            if let Some(c) = &cipher {
                seal_and_write(c, &mut blocks, &mut records, writer)?;
            }
            let key_id = shard.key_first as u32 + keys.len() as u32;
            // Money invariant: the reservation is a proven upper bound (keys_upper_bound).
            assert!(
                key_id < key_end,
                "shard {} ran out of reserved keys",
                shard.ordinal
            );
            let mut key = [0u8; 16];
            getrandom::fill(&mut key).map_err(|e| GenError::Random(e.to_string()))?;
            cipher = Some(Aes128::new(&key.into()));
            keys.push(KeyEntry {
                key_id: key_id as u16,
                shard_ordinal: shard.ordinal,
                key,
            });
            key_totals.push(KeyTotal {
                id: key_id as u16,
                shard_ordinal: shard.ordinal,
                first_index: index,
                envelopes: 0,
                amount_cents: 0,
            });
            key_money = 0;
        }
        key_money += amount;
        // Money invariant: no key covers more than the cap (R5).
        assert!(key_money <= cap, "key over cap");
        let key_total = key_totals.last_mut().expect("a key is open");
        key_total.envelopes += 1;
        key_total.amount_cents += amount;
        let ticket = Ticket {
            envelope_id: EnvelopeId::new(shard.ordinal, index),
            // Validation bounds max_cents by u32::MAX.
            amount_cents: amount as u32,
            batch_id: shard.parts[part].batch_id,
            key_id: key_total.id,
        };
        records.push(TicketRecord::unsealed(&ticket));
        blocks.push(SecretBlock::new(&ticket).to_block());
        written_cents += amount;
        index += 1;
        if records.len() == CHUNK_RECORDS {
            seal_and_write(
                cipher.as_ref().expect("open key"),
                &mut blocks,
                &mut records,
                writer,
            )?;
            progress.add(CHUNK_RECORDS as u64);
            if failed.load(Ordering::Relaxed) {
                return Err(GenError::Output {
                    path: PathBuf::new(),
                    message: "stopped because another file failed".into(),
                });
            }
        }
    }
    let tail = records.len() as u64;
    if let Some(c) = &cipher {
        seal_and_write(c, &mut blocks, &mut records, writer)?;
    }
    progress.add(tail);
    // Money invariants for the whole file: every part fully handed out, exact sum.
    assert!(draws.exhausted(), "a batch was not fully split");
    assert_eq!(written_cents, shard.amount_cents, "shard money total");
    assert_eq!(index as u64, shard.count, "shard record count");
    Ok((keys, key_totals))
}

fn seal_and_write(
    cipher: &Aes128,
    blocks: &mut Vec<Block>,
    records: &mut Vec<TicketRecord>,
    writer: &mut ShardWriter,
) -> Result<(), ShardError> {
    cipher.encrypt_blocks(blocks);
    for (record, block) in records.iter_mut().zip(blocks.iter()) {
        record.sealed.copy_from_slice(block);
    }
    writer.write(records)?;
    records.clear();
    blocks.clear();
    Ok(())
}

/// The batch config entries a plan implies for one variant (used by `gen` and `verify`).
pub fn batch_entries(plan: &Plan, allocation: &Allocation) -> Vec<BatchEntry> {
    allocation
        .batches
        .iter()
        .map(|b| {
            let m = &plan.merchants[b.merchant];
            BatchEntry {
                id: b.id,
                merchant_id: m.id,
                merchant_name: m.name.clone(),
                kind: m.kind,
                slot: plan.slots[b.slot].name.clone(),
                payment_order: m.payment_order.clone(),
                account: m.account.clone(),
                envelopes: b.count,
                amount_cents: b.amount_cents,
                min_cents: m.min_cents,
                max_cents: m.max_cents,
            }
        })
        .collect()
}

/// Per-merchant and per-slot totals a plan implies for one variant.
pub fn plan_totals(plan: &Plan, allocation: &Allocation) -> (Vec<MerchantTotal>, Vec<SlotTotal>) {
    let mut merchants: Vec<MerchantTotal> = plan
        .merchants
        .iter()
        .map(|m| MerchantTotal {
            id: m.id,
            name: m.name.clone(),
            envelopes: 0,
            amount_cents: 0,
        })
        .collect();
    let mut slots: Vec<SlotTotal> = plan
        .slots
        .iter()
        .map(|s| SlotTotal {
            name: s.name.clone(),
            start: s.start.clone(),
            end: s.end.clone(),
            envelopes: 0,
            amount_cents: 0,
        })
        .collect();
    for b in &allocation.batches {
        merchants[b.merchant].envelopes += b.count;
        merchants[b.merchant].amount_cents += b.amount_cents;
        slots[b.slot].envelopes += b.count;
        slots[b.slot].amount_cents += b.amount_cents;
    }
    (merchants, slots)
}

fn write_variant_metadata(
    plan: &Plan,
    allocation: &Allocation,
    outputs: &[ShardOutput],
    opts: &GenOptions,
    created: i64,
    generation: [u8; 16],
) -> Result<VariantSummary, GenError> {
    let variant = &plan.variants[allocation.variant];
    let dir = opts.out.join(&variant.name);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        crate::fsutil::write_atomic(&path, bytes).map_err(|e| GenError::Output {
            path,
            message: e.to_string(),
        })
    };
    let (merchants, slots) = plan_totals(plan, allocation);
    let mut shards = Vec::with_capacity(outputs.len());
    let mut keys = Vec::new();
    for (shard, out) in allocation.shards.iter().zip(outputs) {
        assert_eq!(out.header.shard_ordinal.get(), shard.ordinal);
        let host = &plan.hosts[shard.host];
        let backup = &plan.hosts[host.backup];
        shards.push(ShardEntry {
            ordinal: shard.ordinal,
            path: shard
                .relative_path(plan)
                .to_string_lossy()
                .replace('\\', "/"),
            slot: plan.slots[shard.slot].name.clone(),
            host: host.name.clone(),
            core: shard.core,
            backup_host: backup.name.clone(),
            backup_park: backup.park.clone(),
            envelopes: out.header.record_count.get(),
            amount_cents: out.header.amount_cents.get(),
            body_crc32c: format!("{:08x}", out.header.body_crc32c.get()),
            file_bytes: HEADER_BYTES as u64 + out.header.record_count.get() * RECORD_BYTES as u64,
        });
        keys.extend(out.key_totals.iter().cloned());
    }
    let envelopes = merchants.iter().map(|m| m.envelopes).sum();
    let amount_cents = merchants.iter().map(|m| m.amount_cents).sum();
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        event: plan.event_name.clone(),
        currency: plan.currency.clone(),
        unit: "cent".into(),
        variant: variant.name.clone(),
        variant_index: allocation.variant as u32,
        generated_variants: if plan.lists_variants {
            0
        } else {
            plan.variants.len() as u32
        },
        plan_fingerprint: plan.fingerprint_hex(),
        generation: hex(&generation),
        key_cap_cents: plan.key_cap_cents,
        created_unix: created,
        envelopes,
        amount_cents,
        merchants,
        slots,
        shards,
        keys,
    };
    let batches = BatchConfig {
        event: plan.event_name.clone(),
        variant: variant.name.clone(),
        plan_fingerprint: plan.fingerprint_hex(),
        generation: hex(&generation),
        batches: batch_entries(plan, allocation),
    };
    write(PLAN_COPY_FILE, plan.source.as_bytes())?;
    write(BATCHES_FILE, batches.to_toml().as_bytes())?;
    write(MANIFEST_FILE, manifest.to_json().as_bytes())?;
    Ok(VariantSummary {
        name: variant.name.clone(),
        dir,
        envelopes,
        amount_cents,
        shards: manifest.shards.len(),
        keys: manifest.keys.len(),
    })
}

/// Formats cents as a decimal amount, e.g. 12345 -> "123.45".
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_file() {
        assert_ne!(shard_seed(1, 0), shard_seed(1, 1));
        assert_ne!(shard_seed(1, 0), shard_seed(1, 1 << 24));
        assert_eq!(format_cents(12345), "123.45");
        assert_eq!(format_cents(5), "0.05");
    }
}
