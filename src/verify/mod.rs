//! `hongbao verify`: an independent re-check of a generation (R14, first part).
//!
//! Trusts nothing it reads: the plan copy is fingerprinted against the keyring, the deterministic
//! allocation is recomputed from the plan, every record of every file is decrypted and checked
//! (and, unless `--quick`, compared with the amount and sponsor the generation drew for it
//! from the keyring's seed: `crate::draws`), the order rules of each file are checked (keys
//! filled greedily, sponsors interleaved: [`order`]), and every total is compared three ways
//! (records, manifest, plan). Files are checked in
//! parallel on a pool of plain threads; each thread streams one mmap'd file in chunks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use aes::cipher::BlockDecrypt;
use aes::Block;

mod order;

use crate::gen::{batch_entries, format_cents, plan_totals};
use crate::manifest::{
    BatchConfig, Manifest, MetadataError, ShardEntry, BATCHES_FILE, MANIFEST_FILE, PLAN_COPY_FILE,
};
use crate::plan::{hex, Allocation, Plan, PlanError, ShardPlan};
use crate::progress::Progress;
use crate::ticket::shard::{record_offset, ShardError, ShardReader};
use crate::ticket::{EnvelopeId, Keyring, KeyringError, SecretBlock, TicketRecord};

/// Records decrypted per AES call.
const CHUNK_RECORDS: usize = 4096;
/// Findings kept with full detail by default; the rest are only counted.
pub const FINDINGS_SHOWN_DEFAULT: usize = 200;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// A variant directory (holding manifest.json) or a directory of variant directories.
    pub dir: PathBuf,
    pub keyring: PathBuf,
    /// The operator's own copy of the plan, compared with the copy beside the tickets.
    pub plan: Option<PathBuf>,
    pub threads: usize,
    pub progress: bool,
    pub findings_max: usize,
    /// Draw every file's amounts again from the seed in the keyring and compare each record
    /// (`crate::draws`): catches any change, also one that keeps every total.
    pub regenerate: bool,
}

/// What kind of thing is wrong. Ordered roughly from "whole generation" to "one record".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// Plan copy, manifest and keyring do not belong to one generation.
    Fingerprint,
    /// The plan passed with --plan differs from the plan copy beside the tickets.
    PlanMismatch,
    /// batches.toml disagrees with what the plan implies.
    BatchConfig,
    /// manifest.json disagrees with the plan or with the files.
    ManifestMismatch,
    /// A file the plan implies is not there.
    FileMissing,
    /// A file is there that the plan does not imply (including leftover .tmp files).
    FileUnexpected,
    /// A file could not be read.
    FileUnreadable,
    /// A header is damaged or describes another file.
    Header,
    /// A file is shorter or longer than its header says (truncated or padded).
    Length,
    /// The record bytes do not match the stored CRC32C.
    BodyChecksum,
    /// A record does not open: unknown key, or its sealed part does not match its clear part
    /// (flipped bits, altered amount, forged block, wrong key).
    ForgedRecord,
    /// A record opens but belongs elsewhere: duplicated, swapped, or moved from another file.
    MisplacedRecord,
    /// A record names a batch that does not exist.
    UnknownBatch,
    /// A record's batch belongs to another time slot.
    WrongSlot,
    /// A record's amount is outside its merchant's bounds.
    AmountOutOfBounds,
    /// A record is sealed with a key made for another file.
    ForeignKey,
    /// A key covers more money than the cap, or key totals disagree with the manifest.
    KeyTotals,
    /// Counted envelopes or money disagree with the plan.
    TotalMismatch,
    /// Records are sealed with keys in another way than the generator fills them (one run per
    /// key, in id order, a key full before the next starts): re-sealed or moved records.
    KeyOrder,
    /// More neighbouring records share a sponsor than the file's mix forces.
    Interleave,
    /// A record's amount or sponsor differs from what the generation drew from its seed: it
    /// was changed (re-sealed) after generation, whatever the totals say.
    Altered,
}

impl FindingKind {
    pub fn label(self) -> &'static str {
        match self {
            FindingKind::Fingerprint => "fingerprint",
            FindingKind::PlanMismatch => "plan mismatch",
            FindingKind::BatchConfig => "batch config",
            FindingKind::ManifestMismatch => "manifest mismatch",
            FindingKind::FileMissing => "file missing",
            FindingKind::FileUnexpected => "file unexpected",
            FindingKind::FileUnreadable => "file unreadable",
            FindingKind::Header => "bad header",
            FindingKind::Length => "bad length",
            FindingKind::BodyChecksum => "body checksum",
            FindingKind::ForgedRecord => "forged or damaged record",
            FindingKind::MisplacedRecord => "misplaced record",
            FindingKind::UnknownBatch => "unknown batch",
            FindingKind::WrongSlot => "wrong slot",
            FindingKind::AmountOutOfBounds => "amount out of bounds",
            FindingKind::ForeignKey => "foreign key",
            FindingKind::KeyTotals => "key totals",
            FindingKind::TotalMismatch => "total mismatch",
            FindingKind::KeyOrder => "key order",
            FindingKind::Interleave => "interleave",
            FindingKind::Altered => "altered record",
        }
    }
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// File (and record index and byte offset) or metadata item.
    pub place: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.kind.label(), self.place, self.detail)
    }
}

/// A bounded list of findings plus exact counts of everything found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub shown: Vec<Finding>,
    pub total: u64,
    pub by_kind: BTreeMap<FindingKind, u64>,
    limit: usize,
}

impl Findings {
    fn new(limit: usize) -> Findings {
        Findings {
            limit,
            ..Findings::default()
        }
    }

    fn add(&mut self, kind: FindingKind, place: impl Into<String>, detail: impl Into<String>) {
        self.total += 1;
        *self.by_kind.entry(kind).or_default() += 1;
        if self.shown.len() < self.limit {
            self.shown.push(Finding {
                kind,
                place: place.into(),
                detail: detail.into(),
            });
        }
    }

    fn merge(&mut self, other: Findings) {
        self.total += other.total;
        for (k, n) in other.by_kind {
            *self.by_kind.entry(k).or_default() += n;
        }
        let room = self.limit.saturating_sub(self.shown.len());
        self.shown.extend(other.shown.into_iter().take(room));
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub variants: Vec<String>,
    pub files: usize,
    /// Records that opened and passed every per-record check.
    pub envelopes: u64,
    pub amount_cents: u64,
    pub keys: usize,
    pub findings: Findings,
    pub seconds: f64,
    /// The keyring file is readable by group or others.
    pub keyring_too_open: bool,
    /// Every record was compared with what the generation drew from the seed.
    pub regenerated: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.findings.total == 0
    }
}

/// Why verification could not run at all (as opposed to finding problems).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("plan copy: {0}")]
    Plan(#[from] PlanError),
    /// Neither the directory nor any subdirectory holds a manifest.
    #[error(
        "{0}: no {MANIFEST_FILE} here or in any subdirectory; pass the directory `gen --out` wrote"
    )]
    NoManifest(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Verifies every variant under `opts.dir`.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let (keyring, keyring_too_open) = Keyring::load(&opts.keyring)?;
    let dirs = variant_dirs(&opts.dir)?;
    let mut report = VerifyReport {
        variants: Vec::new(),
        files: 0,
        envelopes: 0,
        amount_cents: 0,
        keys: 0,
        findings: Findings::new(opts.findings_max),
        seconds: 0.0,
        keyring_too_open,
        regenerated: opts.regenerate,
    };
    let mut ordinals: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let single = opts.dir.join(MANIFEST_FILE).is_file();
    let mut indices = BTreeSet::new();
    for dir in dirs {
        if let Ok(m) = Manifest::load(&dir.join(MANIFEST_FILE)) {
            indices.insert(m.variant_index);
        }
        let part = verify_variant(&dir, &keyring, opts, &mut ordinals)?;
        report.variants.push(part.variants[0].clone());
        report.files += part.files;
        report.envelopes += part.envelopes;
        report.amount_cents += part.amount_cents;
        report.keys += part.keys;
        report.findings.merge(part.findings);
    }
    if !single {
        // Every variant the generation made must be here: the keyring holds keys for each
        // (a shard ordinal's top byte is its variant), so a deleted directory shows.
        let made: BTreeSet<u32> = keyring
            .entries()
            .iter()
            .map(|k| k.shard_ordinal >> 24)
            .collect();
        for index in made.difference(&indices) {
            report.findings.add(
                FindingKind::FileMissing,
                opts.dir.display().to_string(),
                format!(
                    "variant index {index} was generated (the keyring holds keys for its files) \
                     but its directory is not here"
                ),
            );
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn variant_dirs(dir: &Path) -> Result<Vec<PathBuf>, VerifyError> {
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(VerifyError::NoManifest(dir.to_path_buf()));
    }
    Ok(dirs)
}

/// What one file contributed.
#[derive(Default)]
struct FileTally {
    envelopes: u64,
    amount_cents: u64,
    /// `(envelopes, cents)` by batch id (index 0 unused).
    batches: Vec<(u64, u64)>,
    /// `(key id, envelopes, cents)` in order of first use.
    keys: Vec<(u16, u64, u64)>,
    /// The order rules of the file's records (keys, interleave).
    order: order::Order,
    findings: Findings,
}

fn verify_variant(
    dir: &Path,
    keyring: &Keyring,
    opts: &VerifyOptions,
    ordinals: &mut BTreeMap<u32, PathBuf>,
) -> Result<VerifyReport, VerifyError> {
    let mut findings = Findings::new(opts.findings_max);
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = Manifest::load(&manifest_path)?;
    let mut plan = Plan::load(&dir.join(PLAN_COPY_FILE))?;
    let dir_name = dir.display().to_string();

    // One generation: plan copy, manifest and keyring must agree on the fingerprint.
    if plan.fingerprint != keyring.plan_fingerprint {
        findings.add(
            FindingKind::Fingerprint,
            format!("{dir_name}/{PLAN_COPY_FILE}"),
            format!(
                "plan fingerprint {} differs from the keyring's {}: this keyring belongs to \
                 another generation, or the plan copy was changed",
                plan.fingerprint_hex(),
                hex(&keyring.plan_fingerprint)
            ),
        );
    }
    if manifest.generation != hex(&keyring.generation) {
        findings.add(
            FindingKind::Fingerprint,
            manifest_path.display().to_string(),
            format!(
                "these tickets are from gen run {} but the keyring is from run {}: pass the \
                 keyring that was written together with these tickets (two runs of one plan \
                 have different keys)",
                manifest.generation,
                hex(&keyring.generation)
            ),
        );
    }
    if manifest.plan_fingerprint != plan.fingerprint_hex() {
        findings.add(
            FindingKind::Fingerprint,
            manifest_path.display().to_string(),
            format!(
                "manifest names plan {} but the plan copy is {}",
                manifest.plan_fingerprint,
                plan.fingerprint_hex()
            ),
        );
    }
    if let Some(given) = &opts.plan {
        let given_plan = Plan::load(given)?;
        if given_plan.fingerprint != plan.fingerprint {
            findings.add(
                FindingKind::PlanMismatch,
                given.display().to_string(),
                format!(
                    "differs from the plan copy {dir_name}/{PLAN_COPY_FILE} ({} vs {})",
                    given_plan.fingerprint_hex(),
                    plan.fingerprint_hex()
                ),
            );
        }
    }
    if manifest.generated_variants > 0 {
        plan.expand_variants(manifest.generated_variants)?;
    }
    let index = manifest.variant_index as usize;
    let allocations = plan.allocate()?;
    let Some(allocation) = allocations.get(index) else {
        findings.add(
            FindingKind::ManifestMismatch,
            manifest_path.display().to_string(),
            format!(
                "variant index {index} does not exist in the plan ({} variants)",
                allocations.len()
            ),
        );
        return Ok(variant_report(&manifest, findings, 0));
    };
    if plan.variants[index].name != manifest.variant {
        findings.add(
            FindingKind::ManifestMismatch,
            manifest_path.display().to_string(),
            format!(
                "variant {index} is {:?} in the plan but {:?} in the manifest",
                plan.variants[index].name, manifest.variant
            ),
        );
    }

    check_batch_config(&plan, allocation, dir, &manifest.generation, &mut findings)?;
    check_manifest_against_plan(&plan, allocation, &manifest, &manifest_path, &mut findings);
    check_files_present(&plan, allocation, dir, &mut findings)?;

    for shard in &allocation.shards {
        if let Some(previous) = ordinals.insert(shard.ordinal, dir.to_path_buf()) {
            findings.add(
                FindingKind::ManifestMismatch,
                dir_name.clone(),
                format!(
                    "shard ordinal {:08x} is also used under {}: envelope ids would collide",
                    shard.ordinal,
                    previous.display()
                ),
            );
        }
    }

    // Every file, in parallel, largest first.
    let batch_entries = batch_entries(&plan, allocation);
    let total: u64 = allocation.shards.iter().map(|s| s.count).sum();
    let progress = Progress::new(opts.progress, total, "tickets");
    let mut order: Vec<usize> = (0..allocation.shards.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(allocation.shards[i].count));
    let next = AtomicUsize::new(0);
    let tallies: Vec<Mutex<Option<FileTally>>> =
        allocation.shards.iter().map(|_| Mutex::new(None)).collect();
    let manifest_shards: HashMap<u32, &ShardEntry> =
        manifest.shards.iter().map(|s| (s.ordinal, s)).collect();
    let batch_slots: Vec<usize> = std::iter::once(usize::MAX)
        .chain(allocation.batches.iter().map(|b| b.slot))
        .collect();
    let key_first_index: HashMap<u16, u32> = manifest
        .keys
        .iter()
        .map(|k| (k.id, k.first_index))
        .collect();
    let context = FileContext {
        plan: &plan,
        keyring,
        batches: &batch_entries,
        batch_slots: &batch_slots,
        dir,
        generation: &manifest.generation,
        key_first_index: &key_first_index,
        regenerate: opts.regenerate,
        findings_max: opts.findings_max,
        progress: &progress,
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.clamp(1, order.len().max(1)) {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(n) else { break };
                let shard = &allocation.shards[i];
                let tally = verify_file(
                    &context,
                    shard,
                    manifest_shards.get(&shard.ordinal).copied(),
                );
                *tallies[i].lock().expect("no panic while held") = Some(tally);
            });
        }
    });
    progress.finish();

    // Totals: per key, per merchant, per slot, per variant.
    let mut key_seen: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    let mut batch_totals = vec![(0u64, 0u64); batch_entries.len() + 1];
    let (mut envelopes, mut amount_cents) = (0u64, 0u64);
    for tally in tallies {
        let tally = tally
            .into_inner()
            .expect("no panic while held")
            .expect("every file checked");
        envelopes += tally.envelopes;
        amount_cents += tally.amount_cents;
        for (id, (n, c)) in tally.batches.iter().enumerate() {
            batch_totals[id].0 += n;
            batch_totals[id].1 += c;
        }
        for &(id, n, c) in &tally.keys {
            let entry = key_seen.entry(id).or_default();
            entry.0 += n;
            entry.1 += c;
        }
        findings.merge(tally.findings);
    }
    check_key_totals(&plan, &manifest, &key_seen, &manifest_path, &mut findings);
    check_merchant_totals(&plan, allocation, &batch_totals, &dir_name, &mut findings);

    let mut report = variant_report(&manifest, findings, allocation.shards.len());
    report.envelopes = envelopes;
    report.amount_cents = amount_cents;
    report.keys = key_seen.len();
    Ok(report)
}

fn variant_report(manifest: &Manifest, findings: Findings, files: usize) -> VerifyReport {
    VerifyReport {
        variants: vec![manifest.variant.clone()],
        files,
        envelopes: 0,
        amount_cents: 0,
        keys: 0,
        findings,
        seconds: 0.0,
        keyring_too_open: false,
        regenerated: false,
    }
}

fn check_batch_config(
    plan: &Plan,
    allocation: &Allocation,
    dir: &Path,
    manifest_generation: &str,
    findings: &mut Findings,
) -> Result<(), VerifyError> {
    let path = dir.join(BATCHES_FILE);
    let place = path.display().to_string();
    let config = match BatchConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            findings.add(FindingKind::BatchConfig, place, e.to_string());
            return Ok(());
        }
    };
    if config.generation != manifest_generation {
        findings.add(
            FindingKind::Fingerprint,
            place.clone(),
            format!(
                "batch config is from gen run {}, the manifest from run {manifest_generation}",
                config.generation
            ),
        );
    }
    if config.plan_fingerprint != plan.fingerprint_hex() {
        findings.add(
            FindingKind::Fingerprint,
            place.clone(),
            "batch config names another plan".to_string(),
        );
    }
    let expected = batch_entries(plan, allocation);
    if config.batches.len() != expected.len() {
        findings.add(
            FindingKind::BatchConfig,
            place.clone(),
            format!(
                "{} batches, the plan implies {}",
                config.batches.len(),
                expected.len()
            ),
        );
    }
    for (got, want) in config.batches.iter().zip(&expected) {
        if got != want {
            findings.add(
                FindingKind::BatchConfig,
                format!("{place} batch {}", want.id),
                format!("is {got:?}, the plan implies {want:?}"),
            );
        }
    }
    Ok(())
}

fn check_manifest_against_plan(
    plan: &Plan,
    allocation: &Allocation,
    manifest: &Manifest,
    manifest_path: &Path,
    findings: &mut Findings,
) {
    let place = manifest_path.display().to_string();
    let (merchants, slots) = plan_totals(plan, allocation);
    if manifest.merchants != merchants {
        findings.add(
            FindingKind::ManifestMismatch,
            format!("{place} merchants"),
            "per-merchant totals differ from the plan".to_string(),
        );
    }
    if manifest.slots != slots {
        findings.add(
            FindingKind::ManifestMismatch,
            format!("{place} slots"),
            "per-slot totals differ from the plan".to_string(),
        );
    }
    let (envelopes, cents) = (plan.total_envelopes(), plan.total_cents());
    if (manifest.envelopes, manifest.amount_cents) != (envelopes, cents) {
        findings.add(
            FindingKind::ManifestMismatch,
            place.clone(),
            format!(
                "totals {} envelopes / {} cents, the plan has {envelopes} / {cents}",
                manifest.envelopes, manifest.amount_cents
            ),
        );
    }
    if manifest.key_cap_cents != plan.key_cap_cents {
        findings.add(
            FindingKind::ManifestMismatch,
            place.clone(),
            format!(
                "key cap {} differs from the plan's {}",
                manifest.key_cap_cents, plan.key_cap_cents
            ),
        );
    }
    if manifest.shards.len() != allocation.shards.len() {
        findings.add(
            FindingKind::ManifestMismatch,
            place.clone(),
            format!(
                "{} shard entries, the plan implies {}",
                manifest.shards.len(),
                allocation.shards.len()
            ),
        );
    }
    for (entry, shard) in manifest.shards.iter().zip(&allocation.shards) {
        let host = &plan.hosts[shard.host];
        let expected_path = shard.relative_path(plan).to_string_lossy().to_string();
        let same = entry.ordinal == shard.ordinal
            && entry.path == expected_path
            && entry.slot == plan.slots[shard.slot].name
            && entry.host == host.name
            && entry.core == shard.core
            && entry.backup_host == plan.hosts[host.backup].name
            && entry.backup_park == plan.hosts[host.backup].park
            && entry.envelopes == shard.count
            && entry.amount_cents == shard.amount_cents;
        if !same {
            findings.add(
                FindingKind::ManifestMismatch,
                format!("{place} shard {}", expected_path),
                format!(
                    "says ordinal {:08x}, path {}, slot {}, host {} core {}, backup {} in {}, {} \
                     envelopes, {} cents; the plan implies ordinal {:08x}, path {expected_path}, \
                     slot {}, host {} core {}, backup {} in {}, {} envelopes, {} cents",
                    entry.ordinal,
                    entry.path,
                    entry.slot,
                    entry.host,
                    entry.core,
                    entry.backup_host,
                    entry.backup_park,
                    entry.envelopes,
                    entry.amount_cents,
                    shard.ordinal,
                    plan.slots[shard.slot].name,
                    host.name,
                    shard.core,
                    plan.hosts[host.backup].name,
                    plan.hosts[host.backup].park,
                    shard.count,
                    shard.amount_cents
                ),
            );
        }
    }
}

/// Every file the plan implies must exist, and nothing else may sit under tickets/.
fn check_files_present(
    plan: &Plan,
    allocation: &Allocation,
    dir: &Path,
    findings: &mut Findings,
) -> Result<(), VerifyError> {
    let expected: BTreeSet<PathBuf> = allocation
        .shards
        .iter()
        .map(|s| dir.join(s.relative_path(plan)))
        .collect();
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.join("tickets")];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(VerifyError::Io { path: d, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| VerifyError::Io {
                path: d.clone(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path);
            }
        }
    }
    for path in found.difference(&expected) {
        findings.add(
            FindingKind::FileUnexpected,
            path.display().to_string(),
            "not a file of this plan (stray copy, leftover .tmp from an interrupted run, or \
             planted)",
        );
    }
    for path in expected.difference(&found) {
        findings.add(
            FindingKind::FileMissing,
            path.display().to_string(),
            "the plan implies this file but it is not there",
        );
    }
    Ok(())
}

struct FileContext<'a> {
    plan: &'a Plan,
    keyring: &'a Keyring,
    batches: &'a [crate::manifest::BatchEntry],
    /// Slot index of each batch id (index 0 unused), so records compare integers, not names.
    batch_slots: &'a [usize],
    dir: &'a Path,
    /// The manifest's generation id, hex.
    generation: &'a str,
    /// The manifest's index of the first record of each key.
    key_first_index: &'a HashMap<u16, u32>,
    regenerate: bool,
    findings_max: usize,
    progress: &'a Progress,
}

fn verify_file(ctx: &FileContext<'_>, shard: &ShardPlan, entry: Option<&ShardEntry>) -> FileTally {
    let plan = ctx.plan;
    let path = ctx.dir.join(shard.relative_path(plan));
    let place = path.display().to_string();
    let mut tally = FileTally {
        batches: vec![(0, 0); ctx.batches.len() + 1],
        order: order::Order::new(plan.key_cap_cents),
        findings: Findings::new(ctx.findings_max),
        ..FileTally::default()
    };
    let mut file = match ShardReader::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let kind = match &e {
                ShardError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    // Already reported by the presence check.
                    ctx.progress.add(shard.count);
                    return tally;
                }
                ShardError::Io { .. } => FindingKind::FileUnreadable,
                ShardError::Header { .. } => FindingKind::Header,
                ShardError::Length { .. } => FindingKind::Length,
            };
            tally.findings.add(kind, place, e.to_string());
            ctx.progress.add(shard.count);
            return tally;
        }
    };
    let h = *file.header();
    let host = &plan.hosts[shard.host];
    let slot = &plan.slots[shard.slot];
    let header_fields = [
        (
            "shard ordinal",
            h.shard_ordinal.get() as i64,
            shard.ordinal as i64,
        ),
        ("variant", h.variant as i64, shard.variant as i64),
        ("slot", h.slot_index.get() as i64, shard.slot as i64),
        ("host", h.host_index.get() as i64, shard.host as i64),
        ("core", h.core.get() as i64, shard.core as i64),
        (
            "backup host",
            h.backup_host_index.get() as i64,
            host.backup as i64,
        ),
        ("slot start", h.slot_start_unix.get(), slot.start_unix),
        ("slot end", h.slot_end_unix.get(), slot.end_unix),
    ];
    for (name, got, want) in header_fields {
        if got != want {
            tally.findings.add(
                FindingKind::Header,
                place.clone(),
                format!("header {name} is {got}, the plan puts {want} here"),
            );
        }
    }
    if hex(&h.generation) != ctx.generation {
        tally.findings.add(
            FindingKind::Fingerprint,
            place.clone(),
            format!(
                "header is from gen run {}, the manifest from run {}",
                hex(&h.generation),
                ctx.generation
            ),
        );
    }
    if h.plan_fingerprint[..] != plan.fingerprint[..16] {
        tally.findings.add(
            FindingKind::Fingerprint,
            place.clone(),
            "header names another plan",
        );
    }
    if (h.record_count.get(), h.amount_cents.get()) != (shard.count, shard.amount_cents) {
        tally.findings.add(
            FindingKind::TotalMismatch,
            place.clone(),
            format!(
                "header says {} envelopes / {} cents, the plan allocates {} / {}",
                h.record_count.get(),
                h.amount_cents.get(),
                shard.count,
                shard.amount_cents
            ),
        );
    }
    let mut records: Vec<TicketRecord> = Vec::with_capacity(CHUNK_RECORDS);
    let mut blocks: Vec<Block> = Vec::with_capacity(CHUNK_RECORDS);
    let mut start = 0usize;
    // What the generation drew for each record, from the keyring's seed.
    let mut draws = ctx
        .regenerate
        .then(|| crate::draws::Draws::new(shard, ctx.keyring.seed));
    let mut drawn: Vec<Option<(u16, u64)>> = Vec::with_capacity(CHUNK_RECORDS);
    loop {
        match file.next_chunk(&mut records, CHUNK_RECORDS) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tally
                    .findings
                    .add(FindingKind::FileUnreadable, place.clone(), e.to_string());
                return tally;
            }
        }
        let chunk = &records[..];
        drawn.clear();
        drawn.extend(chunk.iter().map(|_| {
            let (part, amount) = draws.as_mut()?.next()?;
            Some((shard.parts[part].batch_id, amount))
        }));
        // Runs of one key id: one AES call per run.
        let mut run_start = 0;
        while run_start < chunk.len() {
            let key_id = chunk[run_start].key_id.get();
            let run_end = chunk[run_start..]
                .iter()
                .position(|r| r.key_id.get() != key_id)
                .map_or(chunk.len(), |p| run_start + p);
            let run = &chunk[run_start..run_end];
            match ctx.keyring.cipher(key_id) {
                None => {
                    for (i, _) in run.iter().enumerate() {
                        let index = (start + run_start + i) as u64;
                        tally.findings.add(
                            FindingKind::ForgedRecord,
                            record_place(&place, index),
                            format!("key id {key_id} is not in the keyring"),
                        );
                    }
                }
                Some(cipher) => {
                    blocks.clear();
                    blocks.extend(run.iter().map(|r| Block::clone_from_slice(&r.sealed)));
                    cipher.decrypt_blocks(&mut blocks);
                    for (i, (record, block)) in run.iter().zip(&blocks).enumerate() {
                        let index = (start + run_start + i) as u64;
                        let drawn = drawn[run_start + i];
                        check_record(
                            ctx,
                            shard,
                            &place,
                            (index, drawn),
                            record,
                            block,
                            &mut tally,
                        );
                    }
                }
            }
            run_start = run_end;
        }
        ctx.progress.add(chunk.len() as u64);
        start += chunk.len();
    }
    let body_crc = file.body_crc();
    if body_crc != h.body_crc32c.get() {
        tally.findings.add(
            FindingKind::BodyChecksum,
            place.clone(),
            format!(
                "records checksum {body_crc:08x}, header says {:08x}: records were changed \
                 after generation (see record findings for where)",
                h.body_crc32c.get()
            ),
        );
    }
    match entry {
        Some(e) if e.body_crc32c != format!("{body_crc:08x}") => tally.findings.add(
            FindingKind::BodyChecksum,
            place.clone(),
            format!(
                "records checksum {body_crc:08x}, manifest says {}",
                e.body_crc32c
            ),
        ),
        Some(_) => {}
        None => tally.findings.add(
            FindingKind::ManifestMismatch,
            place.clone(),
            "the manifest has no entry for this file",
        ),
    }

    check_order(ctx, &place, &mut tally);

    // This file's share of every batch must be exactly what the plan allocates.
    let mut expected = vec![(0u64, 0u64); ctx.batches.len() + 1];
    for part in &shard.parts {
        expected[part.batch_id as usize] = (part.count, part.amount_cents);
    }
    for (id, (got, want)) in tally.batches.iter().zip(&expected).enumerate() {
        if got != want {
            tally.findings.add(
                FindingKind::TotalMismatch,
                place.clone(),
                format!(
                    "batch {id}: {} valid envelopes / {} cents, the plan allocates {} / {}",
                    got.0, got.1, want.0, want.1
                ),
            );
        }
    }
    tally
}

/// After a file's records: the interleave rule, and where each key's run starts against the
/// manifest.
fn check_order(ctx: &FileContext<'_>, place: &str, tally: &mut FileTally) {
    let per_batch = tally.batches.iter().map(|b| b.0).filter(|&n| n > 0);
    if let Some(p) = tally.order.interleave_problem(per_batch) {
        tally.findings.add(FindingKind::Interleave, place, p);
    }
    for &(key, first) in &tally.order.first_index {
        match ctx.key_first_index.get(&key) {
            Some(&listed) if listed as u64 != first => tally.findings.add(
                FindingKind::KeyTotals,
                format!("{place} key {key}"),
                format!(
                    "the manifest says its run starts at record {listed}, the file's at {first}"
                ),
            ),
            _ => {}
        }
    }
}

fn record_place(place: &str, index: u64) -> String {
    format!("{place} record {index} (byte {})", record_offset(index))
}

#[inline]
fn check_record(
    ctx: &FileContext<'_>,
    shard: &ShardPlan,
    place: &str,
    (index, drawn): (u64, Option<(u16, u64)>),
    record: &TicketRecord,
    block: &Block,
    tally: &mut FileTally,
) {
    let ticket = match record.check(&SecretBlock::from_block(block)) {
        Ok(t) => t,
        Err(e) => {
            tally.findings.add(
                FindingKind::ForgedRecord,
                record_place(place, index),
                e.to_string(),
            );
            return;
        }
    };
    let expected = EnvelopeId::new(shard.ordinal, index as u32);
    if ticket.envelope_id != expected {
        tally.findings.add(
            FindingKind::MisplacedRecord,
            record_place(place, index),
            format!(
                "holds envelope {} but position {index} of shard {:08x} must hold {expected} \
                 (a duplicated, swapped or moved record)",
                ticket.envelope_id, shard.ordinal
            ),
        );
        return;
    }
    let Some(batch) = ticket
        .batch_id
        .checked_sub(1)
        .and_then(|i| ctx.batches.get(i as usize))
    else {
        tally.findings.add(
            FindingKind::UnknownBatch,
            record_place(place, index),
            format!("batch id {} does not exist", ticket.batch_id),
        );
        return;
    };
    if ctx.batch_slots[batch.id as usize] != shard.slot {
        tally.findings.add(
            FindingKind::WrongSlot,
            record_place(place, index),
            format!(
                "batch {} belongs to slot {:?}, this file to {:?}",
                batch.id, batch.slot, ctx.plan.slots[shard.slot].name
            ),
        );
        return;
    }
    let amount = ticket.amount_cents as u64;
    if amount < batch.min_cents || amount > batch.max_cents {
        tally.findings.add(
            FindingKind::AmountOutOfBounds,
            record_place(place, index),
            format!(
                "{} is outside batch {} bounds [{}, {}]",
                format_cents(amount),
                batch.id,
                format_cents(batch.min_cents),
                format_cents(batch.max_cents)
            ),
        );
        return;
    }
    match ctx.keyring.entry(ticket.key_id) {
        Some(k) if k.shard_ordinal == shard.ordinal => {}
        Some(k) => {
            tally.findings.add(
                FindingKind::ForeignKey,
                record_place(place, index),
                format!(
                    "sealed with key {} which was made for shard {:08x}",
                    ticket.key_id, k.shard_ordinal
                ),
            );
            return;
        }
        None => unreachable!("the record opened with this key"),
    }
    if let Some((batch_id, amount)) = drawn {
        if (ticket.batch_id, ticket.amount_cents as u64) != (batch_id, amount) {
            tally.findings.add(
                FindingKind::Altered,
                record_place(place, index),
                format!(
                    "holds {} of batch {}, but the generation drew {} of batch {} here from the \
                     keyring's seed: changed after generation",
                    format_cents(ticket.amount_cents as u64),
                    ticket.batch_id,
                    format_cents(amount),
                    batch_id
                ),
            );
            // Counted still: the money is in the file, and the totals then say whether it
            // was only moved.
        }
    }
    if let Some(p) = tally
        .order
        .record(index, ticket.key_id, amount, ticket.batch_id)
    {
        tally
            .findings
            .add(FindingKind::KeyOrder, record_place(place, index), p);
    }
    tally.envelopes += 1;
    tally.amount_cents += amount;
    let b = &mut tally.batches[ticket.batch_id as usize];
    b.0 += 1;
    b.1 += amount;
    match tally.keys.last_mut() {
        Some(k) if k.0 == ticket.key_id => {
            k.1 += 1;
            k.2 += amount;
        }
        _ => match tally.keys.iter_mut().find(|k| k.0 == ticket.key_id) {
            Some(k) => {
                k.1 += 1;
                k.2 += amount;
            }
            None => tally.keys.push((ticket.key_id, 1, amount)),
        },
    }
}

fn check_key_totals(
    plan: &Plan,
    manifest: &Manifest,
    seen: &BTreeMap<u16, (u64, u64)>,
    manifest_path: &Path,
    findings: &mut Findings,
) {
    let place = manifest_path.display().to_string();
    for (&id, &(_, cents)) in seen {
        if cents > plan.key_cap_cents {
            findings.add(
                FindingKind::KeyTotals,
                format!("key {id}"),
                format!(
                    "covers {} but the cap is {} (R5)",
                    format_cents(cents),
                    format_cents(plan.key_cap_cents)
                ),
            );
        }
    }
    let listed: BTreeMap<u16, (u64, u64)> = manifest
        .keys
        .iter()
        .map(|k| (k.id, (k.envelopes, k.amount_cents)))
        .collect();
    for (&id, &got) in seen {
        match listed.get(&id) {
            Some(&want) if want == got => {}
            Some(&want) => findings.add(
                FindingKind::KeyTotals,
                format!("{place} key {id}"),
                format!(
                    "manifest says {} envelopes / {} cents, the files hold {} / {}",
                    want.0, want.1, got.0, got.1
                ),
            ),
            None => findings.add(
                FindingKind::KeyTotals,
                format!("{place} key {id}"),
                "used by tickets but not listed in the manifest",
            ),
        }
    }
    for id in listed.keys().filter(|id| !seen.contains_key(id)) {
        findings.add(
            FindingKind::KeyTotals,
            format!("{place} key {id}"),
            "listed in the manifest but seals no valid ticket",
        );
    }
}

fn check_merchant_totals(
    plan: &Plan,
    allocation: &Allocation,
    batch_totals: &[(u64, u64)],
    place: &str,
    findings: &mut Findings,
) {
    let mut merchants = vec![(0u64, 0u64); plan.merchants.len()];
    let mut slots = vec![(0u64, 0u64); plan.slots.len()];
    for b in &allocation.batches {
        let (n, c) = batch_totals[b.id as usize];
        merchants[b.merchant].0 += n;
        merchants[b.merchant].1 += c;
        slots[b.slot].0 += n;
        slots[b.slot].1 += c;
    }
    for (m, &(n, c)) in plan.merchants.iter().zip(&merchants) {
        if (n, c) != (m.count, m.budget_cents) {
            findings.add(
                FindingKind::TotalMismatch,
                format!("{place} merchant {} ({})", m.id, m.name),
                format!(
                    "valid tickets hold {n} envelopes / {} but the plan budgets {} / {}",
                    format_cents(c),
                    m.count,
                    format_cents(m.budget_cents)
                ),
            );
        }
    }
    let (_, plan_slots) = plan_totals(plan, allocation);
    for (s, &(n, c)) in plan_slots.iter().zip(&slots) {
        if (n, c) != (s.envelopes, s.amount_cents) {
            findings.add(
                FindingKind::TotalMismatch,
                format!("{place} slot {}", s.name),
                format!(
                    "valid tickets hold {n} envelopes / {} but the plan puts {} / {} here",
                    format_cents(c),
                    s.envelopes,
                    format_cents(s.amount_cents)
                ),
            );
        }
    }
}
