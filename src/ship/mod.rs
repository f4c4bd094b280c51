//! `hongbao ship`: each host's durable claims published to a NATS JetStream stream, for events
//! whose hosts settle into one ledger through a queue (docs/formats/ship.md). Every claim is a
//! message whose id is its log position, so JetStream's duplicate window drops a re-send; a
//! log's ship position moves (in `<data>/ship.json`) only after the stream acknowledged every
//! claim before it. The host's log stays the record: `--from` re-sends any range.
//!
//! A process of its own: the async NATS client runs on this command's thread in a
//! single-threaded tokio runtime, never on a server's cores.

pub mod cli;
pub mod state;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use zerocopy::FromBytes;

use crate::ledger::{ClaimRecord, KIND_CLAIM};
use crate::serve::setup::DataIdentity;
use crate::store::file::read_log;
use crate::store::record::encoded_len;
use crate::store::LogPosition;

/// How long the stream remembers message ids to drop re-sends.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Where the claims of `host` go in `stream`: `hongbao.<stream>.claims.<host>` (dots and
/// wildcards in a name become `_`). Each stream has subjects of its own.
pub fn subject(stream: &str, host: &str) -> String {
    format!(
        "{}.{}",
        stream_subjects(stream).trim_end_matches(".>"),
        token(host)
    )
}

/// The subjects `stream` captures.
pub fn stream_subjects(stream: &str) -> String {
    format!("hongbao.{}.claims.>", token(stream))
}

fn token(name: &str) -> String {
    name.replace(['.', '*', '>', ' '], "_")
}

/// The message id of the claim at `at` in the log of (`host`, `core`): unique per claim
/// record, the same for every re-send of it.
pub fn message_id(generation: &str, host: &str, core: u16, at: LogPosition) -> String {
    format!("{generation}.{host}.{core}.{}.{}", at.segment, at.offset)
}

/// One claim as a message body (JSON; docs/formats/ship.md).
pub fn body(id: &DataIdentity, core: u16, at: LogPosition, c: &ClaimRecord) -> String {
    serde_json::json!({
        "event": id.event,
        "variant": id.variant,
        "generation": id.generation,
        "host": id.host,
        "core": core,
        "segment": at.segment,
        "offset": at.offset,
        "envelope_id": c.envelope_id.get(),
        "uid": c.uid.get(),
        "amount_cents": c.amount_cents.get(),
        "batch_id": c.batch_id.get(),
        "key_id": c.key_id.get(),
        "claimed_unix": c.claimed_unix.get(),
        "issuing_core": c.issuing_core.get(),
    })
    .to_string()
}

/// Creates the stream when absent (file storage, `replicas` copies, the duplicate window).
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![stream_subjects(name)],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map(drop)
    .map_err(|e| format!("stream {name}: {e}"))
}

/// Up to `max` claims of the log in `dir` from `from`, and the position after the last one
/// (or the log's end when there are fewer).
pub fn read_claims(
    dir: &Path,
    core: u16,
    from: LogPosition,
    max: usize,
) -> Result<(Vec<(LogPosition, ClaimRecord)>, LogPosition), String> {
    let mut claims = Vec::new();
    let mut next = from;
    let mut malformed = None;
    let end = read_log(dir, core, from, |at, view| {
        if view.kind != KIND_CLAIM || claims.len() >= max {
            return;
        }
        match ClaimRecord::read_from_bytes(view.payload) {
            Ok(c) => {
                claims.push((at, c));
                next = LogPosition {
                    segment: at.segment,
                    offset: at.offset + encoded_len(view.payload.len()) as u64,
                };
            }
            Err(_) => malformed = malformed.or(Some(at)),
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(at) = malformed {
        return Err(format!(
            "core {core} position {at}: a malformed claim record"
        ));
    }
    Ok(if claims.len() >= max {
        (claims, next)
    } else {
        (claims, end.max(from))
    })
}

/// What one publish of a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Claims the stream stored.
    pub stored: u64,
    /// Re-sends the stream dropped as duplicates.
    pub duplicates: u64,
}

/// Publishes `claims` (all sent, then every acknowledgement awaited).
pub async fn publish(
    js: &jetstream::Context,
    stream: &str,
    id: &DataIdentity,
    core: u16,
    claims: &[(LogPosition, ClaimRecord)],
) -> Result<Shipped, String> {
    let subject = subject(stream, &id.host);
    let mut acks = std::collections::VecDeque::with_capacity(ACKS_IN_FLIGHT);
    let mut out = Shipped::default();
    for (at, c) in claims {
        // A window of acknowledgements in flight: the client holds back publishes past its
        // own limit until earlier acknowledgements are taken.
        if acks.len() >= ACKS_IN_FLIGHT {
            take_ack(acks.pop_front().expect("not empty"), &mut out).await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            message_id(&id.generation, &id.host, core, *at).as_str(),
        );
        let ack = js
            .publish_with_headers(subject.clone(), headers, body(id, core, *at, c).into())
            .await
            .map_err(|e| format!("publish: {e}"))?;
        acks.push_back(ack);
    }
    for ack in acks {
        take_ack(ack, &mut out).await?;
    }
    Ok(out)
}

/// Publishes awaiting their acknowledgement at most.
const ACKS_IN_FLIGHT: usize = 1024;

async fn take_ack(
    ack: async_nats::jetstream::context::PublishAckFuture,
    out: &mut Shipped,
) -> Result<(), String> {
    let ack = ack
        .await
        .map_err(|e| format!("publish acknowledgement: {e}"))?;
    if ack.duplicate {
        out.duplicates += 1;
    } else {
        out.stored += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_subjects_name_one_claim_and_one_host() {
        let at = LogPosition {
            segment: 3,
            offset: 96,
        };
        assert_eq!(message_id("g1", "bj-a-01", 1, at), "g1.bj-a-01.1.3.96");
        assert_eq!(
            subject("HONGBAO_CLAIMS", "bj.a 01"),
            "hongbao.HONGBAO_CLAIMS.claims.bj_a_01"
        );
    }
}
