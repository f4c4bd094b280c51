//! `hongbao load --op im`: the IM mix (R25). Each connection is one user: it sends single chats
//! to the other users of the run and messages to its group, and pulls its own stream whenever
//! the server PUSHes a new max seq. Every message body carries the run's nonce and the send's
//! intended and actual times (nanoseconds on the run's clock, shared by all load threads), so
//! the reader that pulls a copy records the **delivery latency**: send → visible in the
//! recipient's pull, from the intended time (free of coordinated omission) and from the actual
//! send. Pulled seqs are checked contiguous (a gap or repeat is counted as `seq_gap`).
//!
//! This module holds the pure parts (body layout, SYNC page walking, group layout) and the
//! group setup done before the run over a blocking connection; the load threads
//! ([`super::worker`]) do the rest on their rings.

use std::net::SocketAddr;

use crate::client::Client;
use crate::im::ImReply;
use crate::token::{Auth, TokenKeys};
use crate::wire::im::{ImDecoded, ENTRY_HEADER_BYTES, MEMBERS_PAGE, SYNC_HEADER_BYTES};
use crate::wire::ops::Reply;

/// Bytes at the start of every message body the load generator sends: nonce, intended ns,
/// sent ns (u64 each, little-endian).
pub const BODY_STAMP_BYTES: usize = 24;

/// What every load thread of an IM run shares.
#[derive(Debug)]
pub struct ImMix {
    /// Random per run: bodies (and appinfos, group ids) of other runs are not mistaken for ours.
    pub nonce: u64,
    /// Bytes of each message body (at least [`BODY_STAMP_BYTES`]).
    pub body_bytes: usize,
    /// Share of sends that go to the sender's group (the rest are single chats).
    pub group_share: f64,
    /// Every user of the run (one per connection): the single-chat recipients.
    pub users: Vec<u64>,
    /// Per group: how many users of the run are in it (each message to it has one copy fewer
    /// to measure: the sender's own).
    pub group_users: std::collections::HashMap<u64, u32>,
    /// Copies of this run's messages sent and not yet seen in a pull, over all threads: the
    /// drain after the measured time ends when it reaches 0.
    pub outstanding: std::sync::atomic::AtomicI64,
}

impl ImMix {
    /// Copies a message from a user of the run to `target` has to reach (besides its sender).
    pub fn copies(&self, sender: u64, target_kind: u8, target: u64) -> u32 {
        match target_kind {
            2 => self
                .group_users
                .get(&target)
                .map_or(0, |n| n.saturating_sub(1)),
            _ => u32::from(target != sender),
        }
    }
}

/// Writes a message body: the stamp, then zero padding up to `len` bytes.
pub fn write_body(out: &mut Vec<u8>, nonce: u64, intended_ns: u64, sent_ns: u64, len: usize) {
    let start = out.len();
    out.extend_from_slice(&nonce.to_le_bytes());
    out.extend_from_slice(&intended_ns.to_le_bytes());
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.resize(start + len.max(BODY_STAMP_BYTES), 0);
}

/// The (intended, sent) times of a body this run wrote; None for any other body.
pub fn read_body(nonce: u64, body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < BODY_STAMP_BYTES {
        return None;
    }
    let at = |k: usize| u64::from_le_bytes(body[k..k + 8].try_into().expect("8 bytes"));
    (at(0) == nonce).then(|| (at(8), at(16)))
}

/// One entry of a SYNC page, as the load generator needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView<'a> {
    pub seq: u64,
    pub sender: u64,
    /// 1 user, 2 group.
    pub target_kind: u8,
    /// 1 message, 2 read receipt, 3 withdrawal.
    pub kind: u8,
    pub body: &'a [u8],
}

/// Walks a SYNC reply payload (docs/PROTOCOL.md): calls `each` for every entry in order and
/// returns the stream's max_seq. Every length is checked against the payload.
pub fn walk_page<'a>(
    payload: &'a [u8],
    mut each: impl FnMut(EntryView<'a>),
) -> Result<u64, String> {
    if payload.len() < SYNC_HEADER_BYTES {
        return Err(format!("SYNC reply of {} bytes", payload.len()));
    }
    let u64_at = |b: &[u8], k: usize| u64::from_le_bytes(b[k..k + 8].try_into().expect("8"));
    let max_seq = u64_at(payload, 0);
    let count = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
    let mut at = SYNC_HEADER_BYTES;
    for k in 0..count {
        let rest = &payload[at..];
        if rest.len() < ENTRY_HEADER_BYTES {
            return Err(format!("SYNC entry {k} of {count} is cut short"));
        }
        let body_len = u32::from_le_bytes(rest[60..64].try_into().expect("4 bytes")) as usize;
        if rest.len() < ENTRY_HEADER_BYTES + body_len {
            return Err(format!("SYNC entry {k} of {count}: body cut short"));
        }
        each(EntryView {
            seq: u64_at(rest, 0),
            sender: u64_at(rest, 8),
            target_kind: rest[56],
            kind: rest[58],
            body: &rest[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + body_len],
        });
        at += ENTRY_HEADER_BYTES + body_len;
    }
    if at != payload.len() {
        return Err(format!(
            "SYNC reply has {} bytes after its {count} entries",
            payload.len() - at
        ));
    }
    Ok(max_seq)
}

/// One group of the run: its id and members, the creator (a user of the run) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub gid: u64,
    pub members: Vec<u64>,
}

/// Lays out `groups` groups of `size` members: user k of `users` joins group k mod `groups`;
/// the rest of each group are users outside the run (from `filler_first` on, each in one
/// group), whose streams are written but not read. Returns the groups and, per user, its gid.
pub fn plan_groups(
    users: &[u64],
    groups: usize,
    size: usize,
    filler_first: u64,
    nonce: u64,
) -> Result<(Vec<GroupPlan>, Vec<Option<u64>>), String> {
    if groups == 0 {
        return Ok((Vec::new(), vec![None; users.len()]));
    }
    if groups > users.len() {
        return Err(format!(
            "--im-groups {groups} is more than the {} users (connections): every group needs \
             one of them as its creator",
            users.len()
        ));
    }
    let most = users.len().div_ceil(groups);
    if size < most.max(2) || size > crate::im::GROUP_MEMBERS_MAX {
        return Err(format!(
            "--im-group-size {size}: expected {} ..= {} ({} users in {groups} groups)",
            most.max(2),
            crate::im::GROUP_MEMBERS_MAX,
            users.len()
        ));
    }
    // Group ids from the nonce: a new run never collides with the groups of an earlier one.
    let base = nonce & !0xffff_ffff;
    let mut plans: Vec<GroupPlan> = (0..groups)
        .map(|g| GroupPlan {
            gid: base | g as u64,
            members: Vec::with_capacity(size),
        })
        .collect();
    let mut of = Vec::with_capacity(users.len());
    for (k, &u) in users.iter().enumerate() {
        plans[k % groups].members.push(u);
        of.push(Some(plans[k % groups].gid));
    }
    let mut filler = filler_first;
    for p in &mut plans {
        while p.members.len() < size {
            p.members.push(filler);
            filler += 1;
        }
    }
    Ok((plans, of))
}

/// Creates the groups on the server (GROUP_CREATE by each group's creator, then GROUP_ADD in
/// pages), before the run.
pub fn create_groups(
    target: SocketAddr,
    keys: &TokenKeys,
    expires_unix: u32,
    plans: &[GroupPlan],
) -> Result<(), String> {
    let mut client = Client::connect(target).map_err(|e| format!("{target}: {e}"))?;
    for p in plans {
        let creator = p.members[0];
        let token = Auth {
            uid: creator,
            expires_unix,
        }
        .encode(keys);
        expect_ok(client.hello(&token), "HELLO", p.gid)?;
        let mut pages = p.members[1..].chunks(MEMBERS_PAGE);
        expect_ok(
            client.group_create(p.gid, pages.next().unwrap_or(&[])),
            "GROUP_CREATE",
            p.gid,
        )?;
        for page in pages {
            expect_ok(client.group_add(p.gid, page), "GROUP_ADD", p.gid)?;
        }
    }
    Ok(())
}

fn expect_ok(r: std::io::Result<Reply>, what: &str, gid: u64) -> Result<(), String> {
    match r {
        Ok(Reply::Hello(_)) | Ok(Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))) => Ok(()),
        Ok(Reply::Error { code, message, .. }) => Err(format!(
            "setting up group {gid}: {what} refused: {} ({message})",
            crate::wire::ops::ErrorCode::from_u16(code).map_or("unknown code", |c| c.name())
        )),
        Ok(other) => Err(format!(
            "setting up group {gid}: unexpected reply to {what}: {other:?}"
        )),
        Err(e) => Err(format!("setting up group {gid}: {what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_times_and_only_this_runs_are_read() {
        let mut b = Vec::new();
        write_body(&mut b, 7, 1_000, 1_500, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(read_body(7, &b), Some((1_000, 1_500)));
        assert_eq!(read_body(8, &b), None);
        assert_eq!(read_body(7, &b[..23]), None);
        let mut short = Vec::new();
        write_body(&mut short, 7, 1, 2, 3);
        assert_eq!(short.len(), BODY_STAMP_BYTES);
    }

    fn entry(out: &mut Vec<u8>, seq: u64, sender: u64, target_kind: u8, body: &[u8]) {
        let mut e = [0u8; ENTRY_HEADER_BYTES];
        e[0..8].copy_from_slice(&seq.to_le_bytes());
        e[8..16].copy_from_slice(&sender.to_le_bytes());
        e[56] = target_kind;
        e[58] = 1;
        e[60..64].copy_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&e);
        out.extend_from_slice(body);
    }

    #[test]
    fn pages_are_walked_and_checked() {
        let mut p = Vec::new();
        p.extend_from_slice(&9u64.to_le_bytes());
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        entry(&mut p, 4, 11, 1, b"abc");
        entry(&mut p, 5, 12, 2, b"");
        let mut seen = Vec::new();
        let max = walk_page(&p, |e| {
            seen.push((e.seq, e.sender, e.target_kind, e.body.to_vec()))
        })
        .unwrap();
        assert_eq!(max, 9);
        assert_eq!(
            seen,
            vec![(4, 11, 1, b"abc".to_vec()), (5, 12, 2, Vec::new())]
        );
        // Cut anywhere inside: an error, never a panic.
        for cut in 0..p.len() {
            assert!(walk_page(&p[..cut], |_| {}).is_err(), "cut at {cut}");
        }
        let mut extra = p.clone();
        extra.push(0);
        assert!(walk_page(&extra, |_| {}).is_err());
    }

    #[test]
    fn groups_take_every_user_once_and_fill_up_with_outsiders() {
        let users: Vec<u64> = (1..=10).collect();
        let (plans, of) = plan_groups(&users, 3, 6, 1000, 0xabcd_0000_0000_0000).unwrap();
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[0].members, vec![1, 4, 7, 10, 1000, 1001]);
        assert_eq!(plans[1].members, vec![2, 5, 8, 1002, 1003, 1004]);
        assert_eq!(plans[2].members[..3], [3, 6, 9]);
        assert_eq!(of[3], Some(plans[0].gid));
        assert_eq!(plans[1].gid, 0xabcd_0000_0000_0001);
        assert!(
            plan_groups(&users, 3, 3, 1000, 0).is_err(),
            "4 users in a group of 3"
        );
        assert!(
            plan_groups(&users, 11, 100, 1000, 0).is_err(),
            "a group with no creator"
        );
        let (none, of) = plan_groups(&users, 0, 0, 1000, 0).unwrap();
        assert!(none.is_empty() && of.iter().all(Option::is_none));
    }
}
