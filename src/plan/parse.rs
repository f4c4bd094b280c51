//! Reads `plan.toml` into a [`PlanFile`], listing every problem of shape at once: unknown
//! fields, missing fields and values of the wrong type, each named by its field. (serde stops
//! at the first one, so an operator would fix a plan one error per run.) TOML syntax errors
//! are still reported alone: past one, nothing can be read reliably.
//!
//! Pure: text in, plan file or problems out; runs wherever a plan is read.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::model::{
    default_big_percent, default_currency, default_key_cap, default_unit, EventSection,
    HostSection, MerchantSection, PlanFile, SlotSection, TopologySection, VariantSection,
};
use super::{PlanError, Problem};

/// The plan file, or every problem of its shape.
pub fn parse(text: &str) -> Result<PlanFile, PlanError> {
    let root: Table = text
        .parse()
        .map_err(|e: toml::de::Error| PlanError::Syntax(e.to_string()))?;
    let mut problems = Vec::new();
    let mut top = Fields::new(&root, "", &mut problems);
    let event_table = top.table("event");
    let topology_table = top.table("topology");
    let slots = top.tables("slot", slot);
    let merchants = top.tables("merchant", merchant);
    let variants = top.tables("variant", variant);
    top.finish();
    let event = match event_table {
        Some(Some(t)) => event(Fields::new(t, "event", &mut problems)),
        Some(None) => {
            problems.push(missing("event"));
            None
        }
        None => None,
    };
    let topology = match topology_table {
        Some(Some(t)) => topology(Fields::new(t, "topology", &mut problems)),
        Some(None) => Some(TopologySection { hosts: Vec::new() }),
        None => None,
    };
    match (event, topology, slots, merchants, variants) {
        (Some(event), Some(topology), Some(slots), Some(merchants), Some(variants))
            if problems.is_empty() =>
        {
            Ok(PlanFile {
                event,
                topology,
                slots,
                merchants,
                variants,
            })
        }
        _ => Err(PlanError::Invalid(problems)),
    }
}

fn missing(field: &str) -> Problem {
    Problem {
        field: field.to_string(),
        message: "is missing".into(),
    }
}

fn event(mut f: Fields<'_, '_>) -> Option<EventSection> {
    let name = f.req("name");
    let currency = f.opt("currency");
    let unit = f.opt("unit");
    let key_cap_cents = f.opt("key_cap_cents");
    let big_envelope_percent = f.opt("big_envelope_percent");
    f.finish();
    Some(EventSection {
        name: name?,
        currency: currency?.unwrap_or_else(default_currency),
        unit: unit?.unwrap_or_else(default_unit),
        key_cap_cents: key_cap_cents?.unwrap_or_else(default_key_cap),
        big_envelope_percent: big_envelope_percent?.unwrap_or_else(default_big_percent),
    })
}

fn topology(mut f: Fields<'_, '_>) -> Option<TopologySection> {
    let hosts = f.tables("host", host);
    f.finish();
    Some(TopologySection { hosts: hosts? })
}

fn host(mut f: Fields<'_, '_>) -> Option<HostSection> {
    let name = f.req("name");
    let park = f.req("park");
    let cores = f.req("cores");
    f.finish();
    Some(HostSection {
        name: name?,
        park: park?,
        cores: cores?,
    })
}

fn slot(mut f: Fields<'_, '_>) -> Option<SlotSection> {
    let name = f.req("name");
    let start = f.req("start");
    let end = f.req("end");
    f.finish();
    Some(SlotSection {
        name: name?,
        start: start?,
        end: end?,
    })
}

fn merchant(mut f: Fields<'_, '_>) -> Option<MerchantSection> {
    let id = f.req("id");
    let name = f.req("name");
    let kind = f.req("kind");
    let budget_cents = f.req("budget_cents");
    let count = f.opt("count");
    let min_cents = f.opt("min_cents");
    let max_cents = f.opt("max_cents");
    let slots = f.opt::<BTreeMap<String, u64>>("slots");
    let payment_order = f.opt("payment_order");
    let account = f.opt("account");
    f.finish();
    Some(MerchantSection {
        id: id?,
        name: name?,
        kind: kind?,
        budget_cents: budget_cents?,
        count: count?,
        min_cents: min_cents?,
        max_cents: max_cents?,
        slots: slots?,
        payment_order: payment_order?,
        account: account?,
    })
}

fn variant(mut f: Fields<'_, '_>) -> Option<VariantSection> {
    let name = f.req("name");
    let spread = f.opt("spread");
    f.finish();
    Some(VariantSection {
        name: name?,
        spread: spread?.unwrap_or_default(),
    })
}

/// The fields of one table, read one by one; every problem is recorded with its field's
/// path, and [`Fields::finish`] reports the keys nobody asked for.
struct Fields<'t, 'p> {
    table: &'t Table,
    path: String,
    problems: &'p mut Vec<Problem>,
    known: Vec<&'static str>,
}

impl<'t, 'p> Fields<'t, 'p> {
    fn new(table: &'t Table, path: &str, problems: &'p mut Vec<Problem>) -> Fields<'t, 'p> {
        Fields {
            table,
            path: path.to_string(),
            problems,
            known: Vec::new(),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn problem(&mut self, key: &str, message: String) {
        let field = self.field(key);
        self.problems.push(Problem { field, message });
    }

    /// A field's value converted to `T`: `None` when absent or of the wrong type (recorded).
    fn convert<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<Option<T>> {
        self.known.push(key);
        let Some(value) = self.table.get(key) else {
            return Some(None);
        };
        match value.clone().try_into::<T>() {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                let message = format!("{} ({})", e.message().trim(), describe(value));
                self.problem(key, message);
                None
            }
        }
    }

    fn req<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        match self.convert(key) {
            Some(Some(v)) => Some(v),
            Some(None) => {
                self.problem(key, "is missing".into());
                None
            }
            None => None,
        }
    }

    /// `Some(None)` when absent, `None` when present but wrong (recorded).
    fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<Option<T>> {
        self.convert(key)
    }

    /// A sub-table: `Some(None)` when absent, `None` when not a table (recorded).
    fn table(&mut self, key: &'static str) -> Option<Option<&'t Table>> {
        self.known.push(key);
        match self.table.get(key) {
            None => Some(None),
            Some(Value::Table(t)) => Some(Some(t)),
            Some(other) => {
                let message = format!("must be a table ([{key}]), not {}", describe(other));
                self.problem(key, message);
                None
            }
        }
    }

    /// An array of tables (`[[key]]`), each read by `read`; `None` if any is wrong.
    fn tables<T>(
        &mut self,
        key: &'static str,
        read: impl Fn(Fields<'_, '_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.known.push(key);
        let items = match self.table.get(key) {
            None => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                let message = format!("must be tables ([[{key}]]), not {}", describe(other));
                self.problem(key, message);
                return None;
            }
        };
        let mut out = Some(Vec::with_capacity(items.len()));
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.field(key));
            let read = match item {
                Value::Table(t) => read(Fields::new(t, &path, self.problems)),
                other => {
                    self.problems.push(Problem {
                        field: path,
                        message: format!("must be a table, not {}", describe(other)),
                    });
                    None
                }
            };
            match (read, &mut out) {
                (Some(v), Some(list)) => list.push(v),
                _ => out = None,
            }
        }
        out
    }

    /// Reports the keys of the table that no reader asked for.
    fn finish(self) {
        let mut unknown: Vec<&String> = self
            .table
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            let field = self.field(key);
            self.problems.push(Problem {
                field,
                message: format!(
                    "is not a field of this table (known: {})",
                    self.known.join(", ")
                ),
            });
        }
    }
}

/// A value's type, for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}
