//! Budget plans: parsing, validation (R1), alternative variants (R3) and the deterministic
//! allocation of every merchant's envelopes and money to slots and shard files (R6).
//!
//! Everything here is pure computation used by `gen` and `verify` on any thread. The random part
//! of generation (amount split and sponsor interleave, R2) lives in [`split`] and [`shuffle`];
//! the allocation below is deterministic so that `verify` can recompute it from the plan alone.

pub mod model;
mod parse;
pub mod shuffle;
pub mod split;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub use model::{Kind, PlanFile, KEY_CAP_CENTS_DEFAULT};

/// Most batches (merchant x slot pairs) in one variant: batch ids are u16 and 0 is reserved.
pub const BATCHES_MAX: usize = u16::MAX as usize;
/// Most variants per plan: the variant index takes the top 8 bits of a shard ordinal.
pub const VARIANTS_MAX: usize = 255;
/// Most shard files per variant: the file index takes the low 24 bits of a shard ordinal.
pub const SHARDS_PER_VARIANT_MAX: usize = 1 << 24;
/// Most envelopes in one shard file: the record index is a u32.
pub const ENVELOPES_PER_SHARD_MAX: u64 = u32::MAX as u64;
/// Key ids are u16 and 0 is reserved, so one keyring holds at most this many keys.
pub const KEYS_MAX: u64 = u16::MAX as u64;
/// Most characters (Unicode scalar values, not bytes) in a sponsor's name.
pub const SPONSOR_NAME_MAX: usize = 256;
/// Most cores one host may declare.
pub const CORES_PER_HOST_MAX: u32 = 1024;
/// Longest name (event, host, park, slot, variant): names become path components.
pub const NAME_LEN_MAX: usize = 64;
/// Largest plan file accepted, so a wrong path cannot make us read gigabytes.
pub const PLAN_FILE_BYTES_MAX: u64 = 16 << 20;

/// One thing wrong with a plan, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, e.g. `merchant[2] (id 1003).max_cents`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plan file could not be read (missing, unreadable, too large).
    #[error("cannot read plan {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The file is not valid TOML or does not match the plan schema (unknown or missing field).
    #[error("plan is not valid: {0}")]
    Syntax(String),
    /// The plan parses but breaks one or more rules; every problem found is listed.
    #[error("plan has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A host of the topology, with its backup host resolved (R6).
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub park: String,
    pub cores: u32,
    /// Index of the host that keeps a backup copy of this host's files, in another park.
    pub backup: usize,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub start: String,
    pub end: String,
    pub start_unix: i64,
    pub end_unix: i64,
}

#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: u64,
    pub name: String,
    pub kind: Kind,
    pub budget_cents: u64,
    pub count: u64,
    pub min_cents: u64,
    pub max_cents: u64,
    pub payment_order: String,
    pub account: String,
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    /// `weights[merchant][slot]`: how this variant spreads each merchant over the slots.
    pub weights: Vec<Vec<u64>>,
}

/// A validated plan. Only [`Plan::from_toml`] makes one, so holding a `Plan` means every rule
/// in docs/formats/plan.md holds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The exact bytes of the plan file; they are copied next to the tickets and fingerprinted.
    pub source: String,
    /// SHA-256 of `source`: binds tickets, manifest and keyring to this exact plan.
    pub fingerprint: [u8; 32],
    pub event_name: String,
    pub currency: String,
    pub key_cap_cents: u64,
    /// Percent of each variant's envelopes listed as big (docs/formats/big.md).
    pub big_envelope_percent: u32,
    pub hosts: Vec<Host>,
    pub slots: Vec<Slot>,
    pub merchants: Vec<Merchant>,
    pub variants: Vec<Variant>,
    /// True when the plan file lists `[[variant]]` tables; false when variant "A" is implied.
    pub lists_variants: bool,
}

/// A merchant's envelopes in one slot: the unit of the batch config (R4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// 1-based; 0 is never a valid batch id.
    pub id: u16,
    pub merchant: usize,
    pub slot: usize,
    pub count: u64,
    pub amount_cents: u64,
}

/// A batch's share of one shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub batch_id: u16,
    pub count: u64,
    pub amount_cents: u64,
    pub min_cents: u64,
    pub max_cents: u64,
}

/// One ticket file: a (slot, host, core) of one variant, with everything it must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// `variant << 24 | file_index`; the high half of every envelope id in the file.
    pub ordinal: u32,
    pub variant: usize,
    pub slot: usize,
    pub host: usize,
    pub core: u32,
    pub parts: Vec<Part>,
    pub count: u64,
    pub amount_cents: u64,
    /// First key id reserved for this file.
    pub key_first: u16,
    /// Number of key ids reserved: an upper bound on the keys greedy packing can use.
    pub key_reserved: u16,
}

impl ShardPlan {
    /// Path of the file relative to the variant directory.
    pub fn relative_path(&self, plan: &Plan) -> PathBuf {
        Path::new("tickets")
            .join(&plan.slots[self.slot].name)
            .join(&plan.hosts[self.host].name)
            .join(format!("{}.tix", self.core))
    }
}

/// Everything deterministic about one variant: batches and shard contents.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub variant: usize,
    pub batches: Vec<Batch>,
    pub shards: Vec<ShardPlan>,
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let read_error = |message: String| PlanError::Read {
            path: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
        if meta.len() > PLAN_FILE_BYTES_MAX {
            return Err(read_error(format!(
                "{} bytes is larger than the {} byte limit for a plan",
                meta.len(),
                PLAN_FILE_BYTES_MAX
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        Plan::from_toml(&text)
    }

    /// Parses and validates plan text, collecting every problem rather than stopping at one.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        validate(parse::parse(text)?, text)
    }

    /// Replaces the implied single variant with `count` variants named A, B, C, ... (then
    /// V27, V28, ...), all spreading merchants as the plan says: `gen --variants N` (R3).
    /// Each gets its own random split and order because its shard ordinals differ.
    pub fn expand_variants(&mut self, count: u32) -> Result<(), PlanError> {
        let problem = |message: String| {
            PlanError::Invalid(vec![Problem {
                field: "--variants".into(),
                message,
            }])
        };
        if self.lists_variants {
            return Err(problem(
                "the plan lists its own [[variant]] tables; drop --variants or the tables".into(),
            ));
        }
        if count == 0 || count as usize > VARIANTS_MAX {
            return Err(problem(format!(
                "{count} variants; must be 1..={VARIANTS_MAX}"
            )));
        }
        let weights = self.variants[0].weights.clone();
        self.variants = (0..count)
            .map(|i| Variant {
                name: variant_name(i),
                weights: weights.clone(),
            })
            .collect();
        self.allocate()?;
        Ok(())
    }

    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }

    pub fn total_envelopes(&self) -> u64 {
        self.merchants.iter().map(|m| m.count).sum()
    }

    pub fn total_cents(&self) -> u64 {
        self.merchants.iter().map(|m| m.budget_cents).sum()
    }

    /// Number of shard files per variant.
    pub fn shards_per_variant(&self) -> usize {
        self.slots.len() * self.hosts.iter().map(|h| h.cores as usize).sum::<usize>()
    }

    /// Computes the batches and shard contents of every variant and reserves key ids.
    ///
    /// Deterministic: the same plan always yields the same allocation, which is what lets
    /// `verify` check per-shard, per-batch counts and sums against the plan itself.
    pub fn allocate(&self) -> Result<Vec<Allocation>, PlanError> {
        let mut allocations = Vec::with_capacity(self.variants.len());
        let mut key_next: u64 = 1;
        for (variant_index, variant) in self.variants.iter().enumerate() {
            let mut allocation = self.allocate_variant(variant_index, variant)?;
            for shard in &mut allocation.shards {
                let reserved = keys_upper_bound(
                    shard.amount_cents,
                    shard.count,
                    self.key_cap_cents,
                    shard.parts.iter().map(|p| p.max_cents).max().unwrap_or(0),
                );
                if key_next + reserved > KEYS_MAX + 1 {
                    return Err(PlanError::Invalid(vec![self.too_many_keys()]));
                }
                // The bounds check above keeps both values within u16.
                shard.key_first = key_next as u16;
                shard.key_reserved = reserved as u16;
                key_next += reserved;
            }
            allocations.push(allocation);
        }
        Ok(allocations)
    }

    /// Why the key ids run out, with what would help: the reservation of every shard, summed
    /// over all shards and variants.
    fn too_many_keys(&self) -> Problem {
        let mut need: u128 = 0;
        let mut envelopes: u128 = 0;
        for (i, variant) in self.variants.iter().enumerate() {
            if let Ok(a) = self.allocate_variant(i, variant) {
                for shard in &a.shards {
                    let max = shard.parts.iter().map(|p| p.max_cents).max().unwrap_or(0);
                    need +=
                        keys_upper_bound(shard.amount_cents, shard.count, self.key_cap_cents, max)
                            as u128;
                    envelopes += shard.count as u128;
                }
            }
        }
        Problem {
            field: "event.key_cap_cents".into(),
            message: format!(
                "the event may need up to {need} keys ({} variant(s), {envelopes} envelopes, a cap \
                 of {} cents per key), more than the {KEYS_MAX} key ids there are (16-bit); \
                 raise key_cap_cents (each key then covers more money), generate fewer variants \
                 at once, or split the event",
                self.variants.len(),
                self.key_cap_cents
            ),
        }
    }

    fn allocate_variant(
        &self,
        variant_index: usize,
        variant: &Variant,
    ) -> Result<Allocation, PlanError> {
        let shard_hosts: Vec<(usize, u32)> = self
            .hosts
            .iter()
            .enumerate()
            .flat_map(|(h, host)| (0..host.cores).map(move |c| (h, c)))
            .collect();
        let mut shards: Vec<ShardPlan> = Vec::with_capacity(self.shards_per_variant());
        for slot in 0..self.slots.len() {
            for &(host, core) in &shard_hosts {
                let file_index = shards.len() as u32;
                shards.push(ShardPlan {
                    ordinal: ((variant_index as u32) << 24) | file_index,
                    variant: variant_index,
                    slot,
                    host,
                    core,
                    parts: Vec::new(),
                    count: 0,
                    amount_cents: 0,
                    key_first: 0,
                    key_reserved: 0,
                });
            }
        }
        let per_slot = shard_hosts.len();
        let mut batches = Vec::new();
        for (m, merchant) in self.merchants.iter().enumerate() {
            let slot_counts = apportion(merchant.count, &variant.weights[m]);
            let slot_money = apportion_money(
                merchant.budget_cents,
                &slot_counts,
                merchant.min_cents,
                merchant.max_cents,
            );
            for (slot, (&count, &money)) in slot_counts.iter().zip(&slot_money).enumerate() {
                if count == 0 {
                    continue;
                }
                if batches.len() >= BATCHES_MAX {
                    return Err(PlanError::Invalid(vec![Problem {
                        field: "merchant".into(),
                        message: format!(
                            "more than {BATCHES_MAX} (merchant, slot) batches; batch ids are 16-bit"
                        ),
                    }]));
                }
                let batch_id = (batches.len() + 1) as u16;
                batches.push(Batch {
                    id: batch_id,
                    merchant: m,
                    slot,
                    count,
                    amount_cents: money,
                });
                let shard_counts = apportion(count, &vec![1; per_slot]);
                let shard_money =
                    apportion_money(money, &shard_counts, merchant.min_cents, merchant.max_cents);
                for (k, (&c, &a)) in shard_counts.iter().zip(&shard_money).enumerate() {
                    if c == 0 {
                        continue;
                    }
                    let shard = &mut shards[slot * per_slot + k];
                    shard.parts.push(Part {
                        batch_id,
                        count: c,
                        amount_cents: a,
                        min_cents: merchant.min_cents,
                        max_cents: merchant.max_cents,
                    });
                    shard.count += c;
                    shard.amount_cents += a;
                }
            }
        }
        for shard in &shards {
            if shard.count > ENVELOPES_PER_SHARD_MAX {
                return Err(PlanError::Invalid(vec![Problem {
                    field: format!(
                        "slot {} host {} core {}",
                        self.slots[shard.slot].name, self.hosts[shard.host].name, shard.core
                    ),
                    message: format!(
                        "{} envelopes in one shard file; at most {ENVELOPES_PER_SHARD_MAX} fit \
                         (add cores, hosts or slots)",
                        shard.count
                    ),
                }]));
            }
        }
        Ok(Allocation {
            variant: variant_index,
            batches,
            shards,
        })
    }
}

/// Upper bound on the keys the generator uses for `count` envelopes holding `money` in all,
/// none above `amount_max`, packed greedily in their order into keys of at most `cap` (a key
/// is closed when the next amount would take it over the cap: next fit). The least of three
/// bounds, each proven below; the tightest one depends on the numbers:
///
/// 1. Every key holds at least one envelope: `K <= count`.
/// 2. A closed key holds more than `cap - a >= cap - amount_max` cents (`a`, the amount that
///    did not fit); K - 1 keys are closed: `(K - 1) * (cap - amount_max + 1) <= money`.
/// 3. A key and the next one together hold more than the cap (the next one starts with the
///    amount that did not fit in the first): each of the `K / 2` disjoint pairs holds at least
///    `cap + 1`, so `(K / 2) * (cap + 1) <= money`: `K <= 2 * (money / (cap + 1)) + 1`.
///
/// (2) alone reserved a key per cent when amounts may reach the cap (the default maximum).
pub fn keys_upper_bound(money: u64, count: u64, cap: u64, amount_max: u64) -> u64 {
    if money == 0 || count == 0 {
        return 0;
    }
    assert!(amount_max <= cap, "an envelope larger than the key cap");
    let closed_keys = money / (cap - amount_max + 1) + 1;
    let pairs = (money / cap.saturating_add(1)).saturating_mul(2) + 1;
    count.min(closed_keys).min(pairs)
}

/// Splits `total` into parts proportional to `weights`, exactly, by largest remainder
/// (ties go to the lower index). Deterministic.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let weight_sum: u128 = weights.iter().map(|&w| w as u128).sum();
    assert!(weight_sum > 0, "apportion over zero weight");
    let mut parts: Vec<u64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = total as u128 * w as u128;
        parts.push((exact / weight_sum) as u64);
        remainders.push((exact % weight_sum, i));
    }
    let assigned: u64 = parts.iter().sum();
    let leftover = (total - assigned) as usize;
    assert!(leftover < weights.len().max(1));
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(leftover) {
        parts[i] += 1;
    }
    debug_assert_eq!(parts.iter().sum::<u64>(), total);
    parts
}

/// Splits `money` over parts holding `counts` envelopes each, so that every part stays
/// satisfiable: `count * min <= money_part <= count * max`. Each part first gets its minimum;
/// the rest is shared in proportion to each part's headroom `count * (max - min)`.
///
/// Requires `sum(counts) * min <= money <= sum(counts) * max`; panics otherwise (validation
/// guarantees it, and a violation here would be a money bug).
pub fn apportion_money(money: u64, counts: &[u64], min: u64, max: u64) -> Vec<u64> {
    let count: u128 = counts.iter().map(|&c| c as u128).sum();
    let (money, min, max) = (money as u128, min as u128, max as u128);
    assert!(
        count * min <= money && money <= count * max,
        "unsatisfiable money split"
    );
    let rest = money - count * min;
    let mut parts: Vec<u128> = counts.iter().map(|&c| c as u128 * min).collect();
    if rest > 0 {
        // Headroom shares c·(max-min) / (count·(max-min)) reduce to c / count (rest > 0 implies
        // max > min). Both rest and c fit in u64, so rest·c < 2^128 cannot overflow.
        let mut given: u128 = 0;
        for (part, &c) in parts.iter_mut().zip(counts) {
            let share = rest * c as u128 / count;
            *part += share;
            given += share;
        }
        let mut leftover = rest - given;
        for (part, &c) in parts.iter_mut().zip(counts) {
            if leftover == 0 {
                break;
            }
            let room = c as u128 * max - *part;
            let add = room.min(leftover);
            *part += add;
            leftover -= add;
        }
        assert_eq!(leftover, 0, "money split left cents over");
    }
    let result: Vec<u64> = parts.iter().map(|&p| p as u64).collect();
    for (&p, &c) in result.iter().zip(counts) {
        assert!(c as u128 * min <= p as u128 && p as u128 <= c as u128 * max);
    }
    assert_eq!(result.iter().map(|&p| p as u128).sum::<u128>(), money);
    result
}

/// Name of the i-th generated variant: A..Z, then V27, V28, ...
pub fn variant_name(index: u32) -> String {
    if index < 26 {
        char::from(b'A' + index as u8).to_string()
    } else {
        format!("V{}", index + 1)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn name_rule() -> String {
    format!("must be 1-{NAME_LEN_MAX} characters of A-Z a-z 0-9 . _ - (it becomes a file name)")
}

fn parse_instant(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Checks every rule and builds the plan. Problems are collected, not returned one at a time,
/// so an operator fixes a plan in one round.
fn validate(file: PlanFile, text: &str) -> Result<Plan, PlanError> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| problems.push(Problem { field, message });

    let event = &file.event;
    if !valid_name(&event.name) {
        problem("event.name".into(), name_rule());
    }
    if event.unit != "cent" {
        problem(
            "event.unit".into(),
            format!(
                "is {:?}; only \"cent\" is supported (amounts are integer cents)",
                event.unit
            ),
        );
    }
    if event.currency.len() != 3 || !event.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        problem(
            "event.currency".into(),
            format!(
                "is {:?}; expected a 3-letter ISO 4217 code such as \"CNY\"",
                event.currency
            ),
        );
    }
    if event.key_cap_cents == 0 {
        problem("event.key_cap_cents".into(), "must be at least 1".into());
    }
    if event.big_envelope_percent > 100 {
        problem(
            "event.big_envelope_percent".into(),
            format!("is {}; expected 0 to 100", event.big_envelope_percent),
        );
    }

    // Topology.
    let hosts_in = &file.topology.hosts;
    if hosts_in.is_empty() {
        problem(
            "topology.host".into(),
            "no hosts; add [[topology.host]] tables".into(),
        );
    }
    let mut host_names = HashSet::new();
    for (i, h) in hosts_in.iter().enumerate() {
        let field = format!("topology.host[{i}]");
        if !valid_name(&h.name) {
            problem(format!("{field}.name"), name_rule());
        } else if !host_names.insert(h.name.clone()) {
            problem(
                format!("{field}.name"),
                format!("host {:?} is listed twice", h.name),
            );
        }
        if !valid_name(&h.park) {
            problem(format!("{field}.park"), name_rule());
        }
        if h.cores == 0 || h.cores > CORES_PER_HOST_MAX {
            problem(
                format!("{field}.cores"),
                format!("is {}; must be 1..={CORES_PER_HOST_MAX}", h.cores),
            );
        }
    }
    let parks: Vec<&str> = {
        let mut p: Vec<&str> = hosts_in.iter().map(|h| h.park.as_str()).collect();
        p.sort();
        p.dedup();
        p
    };
    if !hosts_in.is_empty() && parks.len() < 2 {
        problem(
            "topology.host[].park".into(),
            format!(
                "every host is in park {:?}; each file needs a backup host in another park (R6), \
                 so add a host in a second park",
                parks.first().copied().unwrap_or("")
            ),
        );
    }
    // Backup: the next host (cyclically, in file order) that sits in a different park.
    let hosts: Vec<Host> = hosts_in
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let n = hosts_in.len();
            let backup = (1..n)
                .map(|d| (i + d) % n)
                .find(|&j| hosts_in[j].park != h.park)
                .unwrap_or(i);
            Host {
                name: h.name.clone(),
                park: h.park.clone(),
                cores: h.cores,
                backup,
            }
        })
        .collect();

    // Slots.
    if file.slots.is_empty() {
        problem("slot".into(), "no time slots; add [[slot]] tables".into());
    }
    let mut slots = Vec::with_capacity(file.slots.len());
    let mut slot_names = HashSet::new();
    for (i, s) in file.slots.iter().enumerate() {
        let field = format!("slot[{i}]");
        if !valid_name(&s.name) {
            problem(format!("{field}.name"), name_rule());
        } else if !slot_names.insert(s.name.clone()) {
            problem(
                format!("{field}.name"),
                format!("slot {:?} is listed twice", s.name),
            );
        }
        let start = parse_instant(&s.start);
        let end = parse_instant(&s.end);
        if start.is_none() {
            problem(
                format!("{field}.start"),
                format!(
                    "{:?} is not an RFC 3339 instant like \"2027-02-06T20:00:00+08:00\"",
                    s.start
                ),
            );
        }
        if end.is_none() {
            problem(
                format!("{field}.end"),
                format!(
                    "{:?} is not an RFC 3339 instant like \"2027-02-06T20:10:00+08:00\"",
                    s.end
                ),
            );
        }
        if let (Some(a), Some(b)) = (start, end) {
            if a >= b {
                problem(
                    field.to_string(),
                    format!("ends ({}) before or when it starts ({})", s.end, s.start),
                );
            }
            if let Some(prev) = slots.last() {
                let prev: &Slot = prev;
                if a < prev.end_unix {
                    problem(
                        format!("{field}.start"),
                        format!(
                            "starts before slot {:?} ends; slots must be in time order and \
                             must not overlap",
                            prev.name
                        ),
                    );
                }
            }
            slots.push(Slot {
                name: s.name.clone(),
                start: s.start.clone(),
                end: s.end.clone(),
                start_unix: a,
                end_unix: b,
            });
        }
    }
    let slot_index: BTreeMap<&str, usize> = file
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();

    // Merchants.
    if file.merchants.is_empty() {
        problem(
            "merchant".into(),
            "no merchants; add [[merchant]] tables".into(),
        );
    }
    let mut merchants = Vec::with_capacity(file.merchants.len());
    let mut base_weights = Vec::with_capacity(file.merchants.len());
    let mut merchant_ids = HashSet::new();
    let cap = event.key_cap_cents;
    for (i, m) in file.merchants.iter().enumerate() {
        let field = format!("merchant[{i}] (id {})", m.id);
        if !merchant_ids.insert(m.id) {
            problem(format!("{field}.id"), format!("id {} is used twice", m.id));
        }
        if m.name.trim().is_empty() || m.name.chars().count() > SPONSOR_NAME_MAX {
            problem(
                format!("{field}.name"),
                format!("must be 1-{SPONSOR_NAME_MAX} characters (any script) and not blank"),
            );
        }
        for (key, text) in [
            ("name", Some(&m.name)),
            ("payment_order", m.payment_order.as_ref()),
            ("account", m.account.as_ref()),
        ] {
            if text.is_some_and(|t| t.chars().any(char::is_control)) {
                problem(
                    format!("{field}.{key}"),
                    "holds a control character (a tab, a line break, an escape): it is printed \
                     on terminals and in reports"
                        .into(),
                );
            }
        }
        if m.budget_cents == 0 {
            problem(format!("{field}.budget_cents"), "must be at least 1".into());
        }
        let min = m.min_cents.unwrap_or(1);
        let max_default = m.budget_cents.min(cap).min(u32::MAX as u64);
        let max = m.max_cents.unwrap_or(max_default);
        let mut bounds_ok = true;
        if min == 0 {
            problem(
                format!("{field}.min_cents"),
                "must be at least 1 (an envelope holds money)".into(),
            );
            bounds_ok = false;
        }
        if min > max {
            problem(
                format!("{field}.min_cents"),
                format!("{min} is above max_cents {max}"),
            );
            bounds_ok = false;
        }
        if max > u32::MAX as u64 {
            problem(
                format!("{field}.max_cents"),
                format!("{max} does not fit the ticket's 32-bit amount"),
            );
            bounds_ok = false;
        }
        if max > cap {
            problem(
                format!("{field}.max_cents"),
                format!(
                    "{max} is above event.key_cap_cents {cap}: one envelope must fit under one key"
                ),
            );
            bounds_ok = false;
        }
        let budget = m.budget_cents as u128;
        let count = match m.count {
            Some(0) => {
                problem(format!("{field}.count"), "must be at least 1".into());
                0
            }
            Some(c) => {
                if bounds_ok && (c as u128 * min as u128 > budget) {
                    problem(
                        field.to_string(),
                        format!(
                            "{c} envelopes of at least {min} cents need {} cents but the budget is \
                             {budget}",
                            c as u128 * min as u128
                        ),
                    );
                }
                if bounds_ok && (c as u128 * max as u128) < budget {
                    problem(
                        field.to_string(),
                        format!(
                            "{c} envelopes of at most {max} cents hold only {} cents but the budget \
                             is {budget}",
                            c as u128 * max as u128
                        ),
                    );
                }
                c
            }
            None if bounds_ok && m.budget_cents > 0 => {
                // The count whose mean amount is the middle of the bounds, moved into the range
                // of counts that can hold the budget exactly.
                let fewest = m.budget_cents.div_ceil(max);
                let most = m.budget_cents / min;
                if fewest > most {
                    problem(
                        field.to_string(),
                        format!(
                            "no envelope count fits: the budget {budget} needs at least {fewest} \
                             envelopes of at most {max} but allows at most {most} of at least {min}; \
                             widen min_cents/max_cents or set count"
                        ),
                    );
                    0
                } else {
                    let middle = (2 * budget / (min as u128 + max as u128)) as u64;
                    middle.clamp(fewest, most)
                }
            }
            None => 0,
        };
        let weights = resolve_weights(
            m.slots.as_ref(),
            &slot_index,
            file.slots.len(),
            &format!("{field}.slots"),
            &mut problem,
        );
        base_weights.push(weights);
        merchants.push(Merchant {
            id: m.id,
            name: m.name.clone(),
            kind: m.kind,
            budget_cents: m.budget_cents,
            count,
            min_cents: min,
            max_cents: max,
            payment_order: m
                .payment_order
                .clone()
                .unwrap_or_else(|| format!("PO-{}-{}", event.name, m.id)),
            account: m
                .account
                .clone()
                .unwrap_or_else(|| format!("sponsor-{}", m.id)),
        });
    }

    // Variants (R3): by default a single variant "A" using each merchant's own slot weights.
    let mut variants = Vec::new();
    if file.variants.is_empty() {
        variants.push(Variant {
            name: "A".into(),
            weights: base_weights.clone(),
        });
    }
    if file.variants.len() > VARIANTS_MAX {
        problem(
            "variant".into(),
            format!("{} variants; at most {VARIANTS_MAX}", file.variants.len()),
        );
    }
    let mut variant_names = HashSet::new();
    for (i, v) in file.variants.iter().enumerate() {
        let field = format!("variant[{i}]");
        if !valid_name(&v.name) {
            problem(format!("{field}.name"), name_rule());
        } else if !variant_names.insert(v.name.clone()) {
            problem(
                format!("{field}.name"),
                format!("variant {:?} is listed twice", v.name),
            );
        }
        let mut weights = base_weights.clone();
        for (merchant_key, spread) in &v.spread {
            let position = merchant_key
                .parse::<u64>()
                .ok()
                .and_then(|id| file.merchants.iter().position(|m| m.id == id));
            match position {
                Some(m) => {
                    weights[m] = resolve_weights(
                        Some(spread),
                        &slot_index,
                        file.slots.len(),
                        &format!("{field}.spread.{merchant_key}"),
                        &mut problem,
                    );
                }
                None => problem(
                    format!("{field}.spread.{merchant_key}"),
                    format!("no merchant has id {merchant_key:?}"),
                ),
            }
        }
        variants.push(Variant {
            name: v.name.clone(),
            weights,
        });
    }
    if hosts.len() * slots.len() > 0 {
        let shards = slots.len() * hosts.iter().map(|h| h.cores as usize).sum::<usize>();
        if shards > SHARDS_PER_VARIANT_MAX {
            problem(
                "topology".into(),
                format!("{shards} shard files per variant; at most {SHARDS_PER_VARIANT_MAX}"),
            );
        }
    }
    let money_total: u128 = merchants.iter().map(|m| m.budget_cents as u128).sum();
    let count_total: u128 = merchants.iter().map(|m| m.count as u128).sum();
    if money_total > u64::MAX as u128 {
        problem(
            "merchant[].budget_cents".into(),
            format!("budgets add up to {money_total} cents, which exceeds the 64-bit totals of the manifest"),
        );
    }
    if count_total > u64::MAX as u128 {
        problem(
            "merchant[].count".into(),
            format!("envelope counts add up to {count_total}, which exceeds 64 bits"),
        );
    }
    if cap > 0 && money_total.div_ceil(cap as u128) * variants.len() as u128 > KEYS_MAX as u128 {
        problem(
            "event.key_cap_cents".into(),
            format!(
                "{money_total} cents at {cap} cents per key need more than {KEYS_MAX} keys \
                 (key ids are 16-bit); raise the cap"
            ),
        );
    }

    if !problems.is_empty() {
        return Err(PlanError::Invalid(problems));
    }
    let fingerprint: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let plan = Plan {
        source: text.to_string(),
        fingerprint,
        event_name: event.name.clone(),
        currency: event.currency.clone(),
        key_cap_cents: cap,
        big_envelope_percent: event.big_envelope_percent,
        hosts,
        slots,
        merchants,
        variants,
        lists_variants: !file.variants.is_empty(),
    };
    // Every allocation rule is checked by computing it once; this also reserves key ids.
    plan.allocate()?;
    Ok(plan)
}

fn resolve_weights(
    given: Option<&BTreeMap<String, u64>>,
    slot_index: &BTreeMap<&str, usize>,
    slots: usize,
    field: &str,
    problem: &mut impl FnMut(String, String),
) -> Vec<u64> {
    let Some(given) = given else {
        return vec![1; slots.max(1)];
    };
    let mut weights = vec![0; slots.max(1)];
    for (name, &w) in given {
        match slot_index.get(name.as_str()) {
            Some(&s) => weights[s] = w,
            None => problem(
                format!("{field}.{name}"),
                format!("no slot is named {name:?}"),
            ),
        }
    }
    if weights.iter().all(|&w| w == 0) {
        problem(
            field.to_string(),
            "all slot weights are zero; the merchant's money has nowhere to go".into(),
        );
        return vec![1; slots.max(1)];
    }
    if weights.iter().any(|&w| w > u32::MAX as u64) {
        problem(
            field.to_string(),
            format!("slot weights must be at most {}", u32::MAX),
        );
        return vec![1; slots.max(1)];
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const SMALL: &str = r#"
[event]
name = "test"

[[topology.host]]
name = "h0"
park = "A"
cores = 2

[[topology.host]]
name = "h1"
park = "B"
cores = 1

[[slot]]
name = "s0"
start = "2027-02-06T20:00:00+08:00"
end = "2027-02-06T20:10:00+08:00"

[[slot]]
name = "s1"
start = "2027-02-06T21:00:00+08:00"
end = "2027-02-06T21:10:00+08:00"

[[merchant]]
id = 1
name = "One"
kind = "image"
budget_cents = 100000
count = 1000
min_cents = 1
max_cents = 500
slots = { s0 = 3, s1 = 1 }

[[merchant]]
id = 2
name = "Two"
kind = "logo"
budget_cents = 55555
min_cents = 10
max_cents = 100
"#;

    fn problems_of(text: &str) -> Vec<Problem> {
        match Plan::from_toml(text) {
            Err(PlanError::Invalid(p)) => p,
            other => panic!("expected invalid plan, got {other:?}"),
        }
    }

    #[test]
    fn small_plan_allocates_exactly() {
        let plan = Plan::from_toml(SMALL).unwrap();
        assert_eq!(plan.merchants[1].count, 55555 * 2 / 110);
        assert_eq!(plan.hosts[0].backup, 1);
        assert_eq!(plan.hosts[1].backup, 0);
        let alloc = &plan.allocate().unwrap()[0];
        assert_eq!(alloc.shards.len(), 6);
        for (m, merchant) in plan.merchants.iter().enumerate() {
            let count: u64 = alloc
                .batches
                .iter()
                .filter(|b| b.merchant == m)
                .map(|b| b.count)
                .sum();
            let money: u64 = alloc
                .batches
                .iter()
                .filter(|b| b.merchant == m)
                .map(|b| b.amount_cents)
                .sum();
            assert_eq!((count, money), (merchant.count, merchant.budget_cents));
        }
        // Merchant 1 puts three quarters of its envelopes in slot s0.
        assert_eq!(alloc.batches[0].count, 750);
        let shard_total: u64 = alloc.shards.iter().map(|s| s.amount_cents).sum();
        assert_eq!(shard_total, plan.total_cents());
        // Key ranges never overlap.
        let mut next = 1;
        for s in &alloc.shards {
            assert_eq!(s.key_first, next);
            next += s.key_reserved;
        }
    }

    #[test]
    fn rejects_unsatisfiable_merchant_with_field_name() {
        let text = SMALL.replace("count = 1000", "count = 100");
        let p = problems_of(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].field.contains("merchant[0] (id 1)"));
        assert!(
            p[0].message.contains("at most 500 cents"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn collects_several_problems() {
        let text = SMALL
            .replace("park = \"B\"", "park = \"A\"")
            .replace("id = 2", "id = 1")
            .replace("21:10:00", "20:05:00")
            .replace("max_cents = 100\n", "max_cents = 5\n");
        let p = problems_of(&text);
        let joined: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        let joined = joined.join("\n");
        assert!(joined.contains("backup host in another park"), "{joined}");
        assert!(joined.contains("is used twice"), "{joined}");
        assert!(
            joined.contains("ends (") || joined.contains("before"),
            "{joined}"
        );
        assert!(joined.contains("above max_cents"), "{joined}");
    }

    #[test]
    fn rejects_unknown_fields_and_bad_slot_weights() {
        let p = problems_of(&SMALL.replace("[event]\n", "[event]\nbudget = 3\n"));
        assert_eq!(p[0].field, "event.budget", "{p:?}");
        let p = problems_of(&SMALL.replace("s1 = 1 }", "s9 = 1 }"));
        assert!(p[0].message.contains("no slot is named \"s9\""));
        let p = problems_of(&SMALL.replace("{ s0 = 3, s1 = 1 }", "{ s0 = 0 }"));
        assert!(p[0].message.contains("all slot weights are zero"));
    }

    #[test]
    fn every_unknown_missing_or_mistyped_field_is_listed_with_its_field() {
        let text = SMALL
            .replace("[event]\n", "[event]\ncolour = \"red\"\n")
            .replace("cores = 2", "cores = -2")
            .replace("name = \"One\"\n", "")
            .replace("budget_cents = 55555", "budget_cents = \"lots\"")
            .replace("kind = \"logo\"", "kind = \"banner\"")
            .replace("min_cents = 10", "min_cents = 10\nmin_cent = 10")
            + "\n[extra]\nx = 1\n";
        let p = problems_of(&text);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        for expected in [
            "event.colour",
            "topology.host[0].cores",
            "merchant[0].name",
            "merchant[1].kind",
            "merchant[1].budget_cents",
            "merchant[1].min_cent",
            "extra",
        ] {
            assert!(fields.contains(&expected), "{expected} not in {p:#?}");
        }
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(p.iter().any(|p| p.message.contains("is missing")), "{p:#?}");
        // No [event] at all, and hosts that are not tables.
        let p = problems_of("[topology]\nhost = 5\n");
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["event", "topology.host"], "{p:#?}");
    }

    #[test]
    fn sponsor_names_count_characters_and_refuse_control_characters() {
        // `toml` is the name as written in TOML (escapes are TOML's).
        let named = |toml: &str| SMALL.replace("name = \"One\"", &format!("name = \"{toml}\""));
        assert!(Plan::from_toml(&named(&"红".repeat(256))).is_ok());
        let p = problems_of(&named(&"红".repeat(257)));
        assert!(p[0].message.contains("1-256 characters"), "{p:?}");
        for bad in ["One\\u001b[31m", "a\\nb", "tab\\there"] {
            let p = problems_of(&named(bad));
            assert_eq!(p[0].field, "merchant[0] (id 1).name", "{p:?}");
            assert!(p[0].message.contains("control character"), "{p:?}");
        }
    }

    #[test]
    fn rejects_bad_names_and_times() {
        let p = problems_of(&SMALL.replace("name = \"s0\"", "name = \"../x\""));
        assert!(p[0].field.contains("slot[0].name"));
        let p = problems_of(&SMALL.replace("2027-02-06T20:00:00+08:00", "tomorrow"));
        assert!(p[0].message.contains("RFC 3339"));
    }

    #[test]
    fn rejects_envelope_above_key_cap() {
        let text = SMALL.replace("name = \"test\"", "name = \"test\"\nkey_cap_cents = 400");
        let p = problems_of(&text);
        assert!(p
            .iter()
            .any(|p| p.message.contains("one envelope must fit under one key")));
    }

    #[test]
    fn variants_override_spread() {
        let text = format!(
            "{SMALL}\n[[variant]]\nname = \"A\"\n\n[[variant]]\nname = \"B\"\nspread = {{ \"1\" = {{ s1 = 1 }} }}\n"
        );
        let plan = Plan::from_toml(&text).unwrap();
        let allocs = plan.allocate().unwrap();
        assert_eq!(allocs.len(), 2);
        assert_eq!(allocs[1].batches[0].slot, 1);
        assert_eq!(allocs[1].batches[0].count, 1000);
        assert_eq!(allocs[1].shards[0].ordinal, 1 << 24);
        assert!(allocs[1].shards[0].key_first > allocs[0].shards.last().unwrap().key_first);
    }

    /// (budget, count, min, max) of one generated merchant.
    type MerchantNumbers = (u64, Option<u64>, Option<u64>, Option<u64>);

    fn plan_with(merchants: &[MerchantNumbers], cap: u64) -> String {
        let mut text = SMALL[..SMALL.find("[[merchant]]").unwrap()].replace(
            "name = \"test\"",
            &format!("name = \"test\"\nkey_cap_cents = {cap}"),
        );
        for (i, (budget, count, min, max)) in merchants.iter().enumerate() {
            text.push_str(&format!(
                "\n[[merchant]]\nid = {i}\nname = \"m{i}\"\nkind = \"image\"\nbudget_cents = {budget}\n"
            ));
            if let Some(c) = count {
                text.push_str(&format!("count = {c}\n"));
            }
            if let Some(m) = min {
                text.push_str(&format!("min_cents = {m}\n"));
            }
            if let Some(m) = max {
                text.push_str(&format!("max_cents = {m}\n"));
            }
        }
        text
    }

    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..5,
            1u64..100_000,
            Just(u32::MAX as u64),
            Just(i64::MAX as u64 / 2),
            Just(i64::MAX as u64),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Any numbers at all: validation answers Ok or a list of problems, never panics, and an
        /// accepted plan allocates every cent and every envelope exactly.
        #[test]
        fn any_numbers_validate_or_allocate_exactly(
            merchants in proptest::collection::vec(
                (extreme(), proptest::option::of(extreme()), proptest::option::of(extreme()), proptest::option::of(extreme())),
                1..4,
            ),
            cap in extreme(),
        ) {
            let text = plan_with(&merchants, cap);
            if let Ok(plan) = Plan::from_toml(&text) {
                let alloc = &plan.allocate().unwrap()[0];
                // u128 sums: a wrapped u64 on both sides must not pass for equal.
                let count: u128 = alloc.shards.iter().map(|s| s.count as u128).sum();
                let money: u128 = alloc.shards.iter().map(|s| s.amount_cents as u128).sum();
                let budget: u128 = merchants.iter().map(|m| m.0 as u128).sum();
                prop_assert_eq!(money, budget);
                prop_assert_eq!(count, plan.merchants.iter().map(|m| m.count as u128).sum::<u128>());
                prop_assert_eq!(count, plan.total_envelopes() as u128);
                prop_assert_eq!(money, plan.total_cents() as u128);
                for shard in &alloc.shards {
                    for p in &shard.parts {
                        prop_assert!(p.count as u128 * p.min_cents as u128 <= p.amount_cents as u128);
                        prop_assert!(p.amount_cents as u128 <= p.count as u128 * p.max_cents as u128);
                    }
                }
            }
        }

        #[test]
        fn apportion_money_is_exact_and_satisfiable(
            counts in proptest::collection::vec(0u64..1_000_000, 1..10),
            min in 1u64..1000,
            width in 0u64..1000,
            fill in 0.0f64..=1.0,
        ) {
            let total: u64 = counts.iter().sum();
            prop_assume!(total > 0);
            let max = min + width;
            let money = total * min + ((total * width) as f64 * fill) as u64;
            let parts = apportion_money(money, &counts, min, max);
            prop_assert_eq!(parts.iter().sum::<u64>(), money);
        }
    }

    /// Next fit of `amounts` into keys of `cap`, as the generator packs them.
    fn next_fit(amounts: &[u64], cap: u64) -> u64 {
        let (mut keys, mut load) = (0, 0);
        for &a in amounts {
            if keys == 0 || load + a > cap {
                keys += 1;
                load = 0;
            }
            load += a;
        }
        keys
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The bound holds for any amounts in any order (the generator asserts it too).
        #[test]
        fn keys_upper_bound_holds_for_any_packing(
            cap in 1u64..1000,
            amounts in proptest::collection::vec(1u64..1000, 1..300),
        ) {
            let amounts: Vec<u64> = amounts.into_iter().map(|a| a.min(cap)).collect();
            let money: u64 = amounts.iter().sum();
            let max = *amounts.iter().max().unwrap();
            let bound = keys_upper_bound(money, amounts.len() as u64, cap, max);
            prop_assert!(next_fit(&amounts, cap) <= bound, "{} > {bound}", next_fit(&amounts, cap));
        }
    }

    #[test]
    fn key_counts_at_the_edges_are_not_refused() {
        // 300,000.00 CNY with max_cents left at its default (the cap, 250,000.00): at most
        // 3 keys, not one per cent.
        let text = plan_with(&[(30_000_000, Some(1_000), None, None)], 25_000_000);
        assert!(Plan::from_toml(&text).is_ok(), "{:?}", problems_of(&text));
        for max in [25_000_000, 24_999_999] {
            let text = plan_with(&[(30_000_000, Some(1_000), None, Some(max))], 25_000_000);
            assert!(
                Plan::from_toml(&text).is_ok(),
                "max {max}: {:?}",
                problems_of(&text)
            );
        }
        // Exactly 65,535 keys: every envelope is the cap, one per key.
        let exact =
            |count: u64| plan_with(&[(count * 100, Some(count), Some(100), Some(100))], 100);
        let plan = Plan::from_toml(&exact(65_535)).unwrap();
        let reserved: u64 = plan.allocate().unwrap()[0]
            .shards
            .iter()
            .map(|s| s.key_reserved as u64)
            .sum();
        assert_eq!(reserved, 65_535);
        let p = problems_of(&exact(65_536));
        assert!(
            p.iter().any(|p| p.message.contains("more than 65535 keys")),
            "{p:?}"
        );
        // Fewer keys than ids at the least, but the reservation (what any order of amounts
        // could need) does not fit: refused, saying how many and what helps.
        let text = plan_with(&[(4_000_000, Some(100_000), Some(1), Some(100))], 100);
        let p = problems_of(&text);
        assert!(
            p.iter().any(|p| p.message.contains("may need up to")
                && p.message.contains("raise key_cap_cents")),
            "{p:?}"
        );
    }

    #[test]
    fn totals_that_overflow_u64_are_refused() {
        // TOML integers are i64, so three merchants are needed to overflow a u64 sum.
        let big = i64::MAX as u64;
        let m = (big, None, None, None);
        let text = plan_with(&[m, m, m], big);
        let p = problems_of(&text);
        assert!(p.iter().any(|p| p.message.contains("exceeds")), "{p:?}");
    }

    #[test]
    fn apportion_money_does_not_overflow_at_the_limits() {
        // Found by the property test: rest * headroom overflowed u128.
        let parts = apportion_money(u64::MAX, &[1 << 62, 1 << 62], 1, 4);
        assert_eq!(
            parts.iter().map(|&p| p as u128).sum::<u128>(),
            u64::MAX as u128
        );
        // The shrunk case the property test found, through validation and allocation.
        let text = plan_with(
            &[(i64::MAX as u64, Some(17_179_869_225), None, None)],
            (1 << 62) - 1,
        );
        let plan = Plan::from_toml(&text).unwrap();
        let alloc = &plan.allocate().unwrap()[0];
        let money: u128 = alloc.shards.iter().map(|s| s.amount_cents as u128).sum();
        assert_eq!(money, i64::MAX as u128);
    }

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(apportion(7, &[0, 1]), vec![0, 7]);
        assert_eq!(apportion_money(100, &[2, 3], 10, 30), vec![40, 60]);
        assert_eq!(apportion_money(50, &[2, 3], 10, 30), vec![20, 30]);
    }
}
