//! What reconciliation finds wrong with a claim or a ledger row, and the bounded list that
//! keeps them (every finding counted, the first ones kept in full). Plain data; no IO.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::LogPosition;
use crate::ticket::EnvelopeId;

/// Kinds of finding about one claim or ledger row. Each one holds the row: it is not credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The envelope's file is not one of the variant's files (another variant or event, or a
    /// made-up id).
    UnknownShard,
    /// The envelope's index is past the last record of its file.
    NoSuchTicket,
    /// The ticket does not open with the keyring (damaged or forged record).
    TicketUnreadable,
    /// Amount, batch or key differ from the ticket's.
    TicketMismatch,
    /// The claim lies in the log of a host that does not serve the envelope's file.
    WrongHost,
    /// The envelope's index was never reserved for issuing on that host: no shake handed it out.
    NeverIssued,
    /// The ticket's key is refused by the key lists.
    DeniedKey,
    /// The envelope is claimed more than once (two hosts, or a forged second record).
    Duplicate,
    /// A ledger row differs from the claim record at the log position it names.
    RowDiffers,
    /// A ledger row names a log position that holds no claim.
    NoClaim,
    /// A claim before its log's settle position has no ledger row: lost between log and ledger.
    MissingFromLedger,
}

impl FindingKind {
    pub fn label(self) -> &'static str {
        match self {
            FindingKind::UnknownShard => "unknown_shard",
            FindingKind::NoSuchTicket => "no_such_ticket",
            FindingKind::TicketUnreadable => "ticket_unreadable",
            FindingKind::TicketMismatch => "ticket_mismatch",
            FindingKind::WrongHost => "wrong_host",
            FindingKind::NeverIssued => "never_issued",
            FindingKind::DeniedKey => "denied_key",
            FindingKind::Duplicate => "duplicate",
            FindingKind::RowDiffers => "row_differs",
            FindingKind::NoClaim => "no_claim",
            FindingKind::MissingFromLedger => "missing_from_ledger",
        }
    }
}

/// Where a finding is: the envelope, and the log position of the claim or row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub envelope_id: String,
    pub host: String,
    pub core: u16,
    pub position: String,
}

impl Place {
    pub fn new(envelope: EnvelopeId, host: &str, core: u16, at: LogPosition) -> Place {
        Place {
            envelope_id: envelope.to_string(),
            host: host.to_string(),
            core,
            position: format!("{core}:{}:{}", at.segment, at.offset),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    #[serde(flatten)]
    pub place: Place,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] envelope {} ({} {}): {}",
            self.kind.label(),
            self.place.envelope_id,
            self.place.host,
            self.place.position,
            self.detail
        )
    }
}

/// Every finding counted by kind; the first `limit` kept in full.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub shown: Vec<Finding>,
    #[serde(skip)]
    limit: usize,
}

impl Findings {
    pub fn new(limit: usize) -> Findings {
        Findings {
            limit,
            ..Findings::default()
        }
    }

    pub fn add(&mut self, finding: Finding) {
        self.total += 1;
        *self.by_kind.entry(finding.kind.label()).or_default() += 1;
        if self.shown.len() < self.limit {
            self.shown.push(finding);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_all_counted_and_the_first_kept() {
        let mut f = Findings::new(1);
        let place = Place::new(EnvelopeId::new(3, 9), "h", 1, LogPosition::default());
        for kind in [
            FindingKind::NoClaim,
            FindingKind::NoClaim,
            FindingKind::Duplicate,
        ] {
            f.add(Finding {
                kind,
                place: place.clone(),
                detail: "x".into(),
            });
        }
        assert_eq!(f.total, 3);
        assert_eq!(f.by_kind["no_claim"], 2);
        assert_eq!(f.shown.len(), 1);
        assert_eq!(
            f.shown[0].to_string(),
            "[no_claim] envelope 00000003:9 (h 1:0:0): x"
        );
    }
}
