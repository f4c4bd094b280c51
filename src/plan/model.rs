//! The budget model as written by a payments operator (`plan.toml`), exactly as parsed.
//!
//! Nothing here is trusted yet: [`crate::plan::Plan::from_toml`] turns a [`PlanFile`] into a
//! validated [`crate::plan::Plan`]. Runs in the `gen` and `verify` commands (any thread).
//! docs/formats/plan.md documents every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default money one AES key may cover: 250,000.00 CNY in cents (R5).
pub const KEY_CAP_CENTS_DEFAULT: u64 = 25_000_000;

/// The whole plan file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub event: EventSection,
    pub topology: TopologySection,
    #[serde(rename = "slot", default)]
    pub slots: Vec<SlotSection>,
    #[serde(rename = "merchant", default)]
    pub merchants: Vec<MerchantSection>,
    /// Alternative plans (R3) generated side by side from the same budget.
    #[serde(rename = "variant", default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSection {
    pub name: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Every amount in the plan is an integer count of this unit. Only "cent" exists today.
    #[serde(default = "default_unit")]
    pub unit: String,
    /// Most money one key may cover (R5).
    #[serde(default = "default_key_cap")]
    pub key_cap_cents: u64,
    /// Share of each variant's envelopes, largest amounts first, listed as big envelopes
    /// (credited at once after their claim; docs/formats/big.md). 0 lists none.
    #[serde(default = "default_big_percent")]
    pub big_envelope_percent: u32,
}

pub(super) fn default_currency() -> String {
    "CNY".to_string()
}
pub(super) fn default_unit() -> String {
    "cent".to_string()
}
pub(super) fn default_big_percent() -> u32 {
    BIG_ENVELOPE_PERCENT_DEFAULT
}
/// The largest tenth of the envelopes are big unless the plan says otherwise.
pub const BIG_ENVELOPE_PERCENT_DEFAULT: u32 = 10;
pub(super) fn default_key_cap() -> u64 {
    KEY_CAP_CENTS_DEFAULT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySection {
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    pub name: String,
    /// Data-center "park"; a host's backup is always in another park (R6).
    pub park: String,
    /// Executor cores on this host: one ticket file per core per slot.
    pub cores: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSection {
    pub name: String,
    /// RFC 3339 instant, e.g. "2027-02-06T20:00:00+08:00".
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Video,
    Logo,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Video => "video",
            Kind::Logo => "logo",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantSection {
    pub id: u64,
    pub name: String,
    pub kind: Kind,
    pub budget_cents: u64,
    /// Number of envelopes. When absent it is derived from the bounds (see docs/formats/plan.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cents: Option<u64>,
    /// Relative weight per slot name; absent means equal weight in every slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<String, u64>>,
    /// Payment order that funds this sponsor; lives only in the batch config, never in a ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSection {
    pub name: String,
    /// Per-merchant slot weights that replace the merchant's own `slots` in this variant,
    /// keyed by merchant id (as a string, since TOML keys are strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spread: BTreeMap<String, BTreeMap<String, u64>>,
}
