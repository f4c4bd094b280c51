//! Group memberships through time, and how their history is collapsed (R24: compaction keeps
//! final states). Used by each core's engine ([`super::engine`]) for the groups homed on it,
//! and by recovery.
//!
//! A group message goes to the members at one version of its group, and its withdrawal, its
//! unread list and its delivery after a crash go to exactly those members later. So the
//! group's core keeps, beside the members, the memberships that ended, for as long as a
//! message sent at an older version can still be asked about. That is decided by a **floor
//! round** ([`FloorRound`]): the group's core asks every core for the oldest version of each
//! of its groups that any message there still refers to ([`VersionIndex`]: the membership
//! versions of the retained group messages of the users homed on a core, plus sends accepted
//! and not stored yet); the floor is the oldest of the answers, and of the version durable
//! when the round started (a send answered after that can only get that version or a newer
//! one, and one answered before is in its core's answer: the queues between two cores are
//! first in, first out). Memberships that ended at or before the floor go; a version below
//! it is not answerable any more.
//!
//! On disk a group's history is its change records; compaction may drop the ones a durable
//! **snapshot** covers ([`Group::snapshot_parts`], log kind 21): the members with the version
//! that added each, the past memberships above the floor, the floor and the owner, in parts
//! that fit a record. Recovery starts a group from its newest complete snapshot and applies
//! the changes after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::engine::Partition;
use super::model::MsgId;
use super::record::{GroupChange, SnapshotPart, SNAPSHOT_ITEMS_PER_PART};

pub(super) struct Group {
    pub owner: u64,
    /// Members including every change appended (durable or not): what changes are checked
    /// against; each with the version that added it.
    pub members: HashMap<u64, u64>,
    /// Past memberships: (uid, version that added it, version that removed it), those that
    /// ended after `floor`. With `members` they give the members at any version from the
    /// floor on.
    pub past: Vec<(u64, u64, u64)>,
    pub next_version: u64,
    /// The durable membership, as sends see it (None until the creation is durable).
    pub durable: Option<(u64, Arc<Partition>, usize)>,
    /// Versions below this are not answerable (no message still retained was sent to one).
    pub floor: u64,
    /// The newest snapshot (version, floor) appended to the log, and the newest durable one:
    /// compaction drops change records only up to a durable snapshot.
    pub snap_appended: Option<(u64, u64)>,
    pub snap_durable: Option<(u64, u64)>,
}

impl Group {
    pub fn new(owner: u64) -> Group {
        Group {
            owner,
            members: HashMap::new(),
            past: Vec::new(),
            next_version: 1,
            durable: None,
            floor: 0,
            snap_appended: None,
            snap_durable: None,
        }
    }

    /// The version the next change gets minus one: what a snapshot now describes.
    pub fn version(&self) -> u64 {
        self.next_version - 1
    }

    /// Applies `change` as version `version` (the next one).
    pub fn apply(&mut self, version: u64, change: &GroupChange) {
        assert_eq!(version, self.next_version, "group changes apply in order");
        match change {
            GroupChange::Create { owner, members } => {
                self.members.insert(*owner, version);
                for &m in members {
                    self.members.entry(m).or_insert(version);
                }
            }
            GroupChange::Add { members, .. } => {
                for &m in members {
                    self.members.entry(m).or_insert(version);
                }
            }
            GroupChange::Remove { members, .. } => {
                for m in members {
                    if let Some(added) = self.members.remove(m) {
                        self.past.push((*m, added, version));
                    }
                }
            }
        }
        self.next_version = version + 1;
    }

    /// The members at `version`, sorted; None below the floor (that history is gone).
    pub fn members_at(&self, version: u64) -> Option<Vec<u64>> {
        if version < self.floor {
            return None;
        }
        let mut out: Vec<u64> = self
            .members
            .iter()
            .filter(|&(_, &added)| added <= version)
            .map(|(&m, _)| m)
            .chain(
                self.past
                    .iter()
                    .filter(|&&(_, added, removed)| added <= version && version < removed)
                    .map(|&(m, _, _)| m),
            )
            .collect();
        out.sort_unstable();
        Some(out)
    }

    /// Raises the floor to `floor` (never lowers it); forgets the memberships that ended at
    /// or before it. Returns how many were forgotten.
    pub fn raise_floor(&mut self, floor: u64) -> usize {
        if floor <= self.floor {
            return 0;
        }
        self.floor = floor;
        let before = self.past.len();
        self.past.retain(|&(_, _, removed)| removed > floor);
        before - self.past.len()
    }

    /// The snapshot of the group now (at [`Group::version`]), in parts of at most
    /// [`SNAPSHOT_ITEMS_PER_PART`] members and past memberships; sorted, so the same state
    /// always gives the same bytes.
    pub fn snapshot_parts(&self) -> Vec<SnapshotPart> {
        let mut members: Vec<(u64, u64)> = self.members.iter().map(|(&u, &a)| (u, a)).collect();
        members.sort_unstable();
        let mut past = self.past.clone();
        past.sort_unstable();
        let total = members.len() + past.len();
        let parts = total.div_ceil(SNAPSHOT_ITEMS_PER_PART).max(1);
        assert!(
            parts <= usize::from(u16::MAX),
            "a group's snapshot fits 65,535 parts"
        );
        let mut out = Vec::with_capacity(parts);
        let (mut m, mut p) = (&members[..], &past[..]);
        for part in 0..parts {
            let take_m = m.len().min(SNAPSHOT_ITEMS_PER_PART);
            let take_p = p.len().min(SNAPSHOT_ITEMS_PER_PART - take_m);
            out.push(SnapshotPart {
                owner: self.owner,
                floor: self.floor,
                part: part as u16,
                parts: parts as u16,
                members: m[..take_m].to_vec(),
                past: p[..take_p].to_vec(),
            });
            m = &m[take_m..];
            p = &p[take_p..];
        }
        out
    }

    /// The group as the complete snapshot `parts` of `version` describes it (parts checked
    /// one by one when decoded; here that they agree and form one membership).
    pub fn from_snapshot(version: u64, mut parts: Vec<SnapshotPart>) -> Result<Group, String> {
        parts.sort_unstable_by_key(|p| p.part);
        let first = parts.first().ok_or("a snapshot without parts")?;
        let (owner, floor, count) = (first.owner, first.floor, first.parts);
        let whole = parts.len() == usize::from(count)
            && parts.iter().enumerate().all(|(i, p)| {
                usize::from(p.part) == i && (p.owner, p.floor, p.parts) == (owner, floor, count)
            });
        if !whole {
            return Err(format!(
                "snapshot of version {version}: parts that do not agree"
            ));
        }
        let mut g = Group::new(owner);
        for p in parts {
            for (uid, added) in p.members {
                if g.members.insert(uid, added).is_some() {
                    return Err(format!(
                        "snapshot of version {version}: member {uid} listed twice"
                    ));
                }
            }
            g.past.extend(p.past);
        }
        if !g.members.contains_key(&owner) {
            return Err(format!(
                "snapshot of version {version}: the owner {owner} is not a member"
            ));
        }
        g.next_version = version + 1;
        g.floor = floor;
        g.snap_appended = Some((version, floor));
        g.snap_durable = Some((version, floor));
        Ok(g)
    }
}

/// The membership version of each retained group message of the users homed on a core (its
/// recipients, for its withdrawal, unread list and redelivery), and per group the versions
/// still referred to, so the oldest is known at once.
#[derive(Default)]
pub(super) struct VersionIndex {
    by_msg: HashMap<MsgId, (u64, u64)>,
    /// gid -> (version -> messages sent at it).
    live: HashMap<u64, BTreeMap<u64, u32>>,
}

impl VersionIndex {
    /// Message `id` went to group `gid` at `version`.
    pub fn insert(&mut self, id: MsgId, gid: u64, version: u64) {
        if let Some(old) = self.by_msg.insert(id, (gid, version)) {
            self.release(old);
        }
        *self
            .live
            .entry(gid)
            .or_default()
            .entry(version)
            .or_default() += 1;
    }

    fn release(&mut self, (gid, version): (u64, u64)) {
        let per_group = self.live.get_mut(&gid).expect("counted");
        let n = per_group.get_mut(&version).expect("counted");
        *n -= 1;
        if *n == 0 {
            per_group.remove(&version);
            if per_group.is_empty() {
                self.live.remove(&gid);
            }
        }
    }

    /// The membership version message `id` went to.
    pub fn get(&self, id: &MsgId) -> Option<u64> {
        self.by_msg.get(id).map(|&(_, v)| v)
    }

    /// Keeps the messages `keep` says.
    pub fn retain(&mut self, mut keep: impl FnMut(&MsgId) -> bool) {
        let mut gone = Vec::new();
        self.by_msg.retain(|id, at| {
            let k = keep(id);
            if !k {
                gone.push(*at);
            }
            k
        });
        for at in gone {
            self.release(at);
        }
    }

    /// (gid, oldest version referred to) of every group with messages here.
    pub fn oldest(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.live
            .iter()
            .filter_map(|(&gid, versions)| versions.keys().next().map(|&v| (gid, v)))
    }
}

/// A floor round of the groups homed on one core, while its answers come in.
pub(super) struct FloorRound {
    pub id: u64,
    /// Cores that have not answered yet.
    pub waiting: u16,
    /// The durable version of each group homed here when the round started.
    pub start: HashMap<u64, u64>,
    /// The oldest version referred to, per group, over the answers so far.
    pub oldest: HashMap<u64, u64>,
}

impl FloorRound {
    pub fn answer(&mut self, floors: &[(u64, u64)]) {
        for &(gid, v) in floors {
            let o = self.oldest.entry(gid).or_insert(v);
            *o = (*o).min(v);
        }
        self.waiting -= 1;
    }

    /// (gid, floor) for every group of the round.
    pub fn floors(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.start.iter().map(|(&gid, &v0)| {
            let floor = self.oldest.get(&gid).map_or(v0, |&o| o.min(v0));
            (gid, floor)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::record::{decode_snapshot, encode_snapshot};
    use proptest::prelude::*;

    fn add(members: &[u64]) -> GroupChange {
        GroupChange::Add {
            actor: 1,
            members: members.to_vec(),
        }
    }

    fn remove(members: &[u64]) -> GroupChange {
        GroupChange::Remove {
            actor: 1,
            members: members.to_vec(),
        }
    }

    #[test]
    fn history_below_the_floor_goes_and_is_not_answered() {
        let mut g = Group::new(1);
        g.apply(
            1,
            &GroupChange::Create {
                owner: 1,
                members: vec![2, 3],
            },
        );
        g.apply(2, &remove(&[2])); // {1, 3}
        g.apply(3, &add(&[4, 2])); // {1, 2, 3, 4}
        g.apply(4, &remove(&[3])); // {1, 2, 4}
        assert_eq!(g.members_at(1), Some(vec![1, 2, 3]));
        assert_eq!(g.members_at(2), Some(vec![1, 3]));
        assert_eq!(g.past.len(), 2);
        assert_eq!(g.raise_floor(2), 1, "2's first membership ended at 2");
        assert_eq!(g.members_at(1), None);
        assert_eq!(g.members_at(2), Some(vec![1, 3]));
        assert_eq!(g.members_at(3), Some(vec![1, 2, 3, 4]));
        assert_eq!(g.raise_floor(1), 0, "a floor never goes down");
        assert_eq!(g.floor, 2);
        assert_eq!(g.raise_floor(4), 1);
        assert_eq!(g.members_at(4), Some(vec![1, 2, 4]));
        assert!(g.past.is_empty());
    }

    #[test]
    fn the_version_index_knows_the_oldest_version_per_group() {
        let mut x = VersionIndex::default();
        let id = |seq| MsgId { sender: 7, seq };
        x.insert(id(1), 10, 5);
        x.insert(id(2), 10, 3);
        x.insert(id(3), 10, 3);
        x.insert(id(4), 11, 9);
        let mut o: Vec<(u64, u64)> = x.oldest().collect();
        o.sort_unstable();
        assert_eq!(o, [(10, 3), (11, 9)]);
        x.retain(|m| m.seq != 2);
        assert_eq!(x.oldest().find(|o| o.0 == 10), Some((10, 3)));
        x.retain(|m| m.seq != 3 && m.seq != 4);
        let o: Vec<(u64, u64)> = x.oldest().collect();
        assert_eq!(o, [(10, 5)]);
        assert_eq!(x.get(&id(1)), Some(5));
        assert_eq!(x.by_msg.len(), 1);
        x.insert(id(1), 10, 6); // the same message again replaces, not adds
        assert_eq!(x.oldest().collect::<Vec<_>>(), [(10, 6)]);
        x.retain(|_| false);
        assert_eq!(x.oldest().count(), 0);
        assert!(x.live.is_empty());
    }

    #[test]
    fn a_round_takes_the_oldest_answer_or_the_version_at_its_start() {
        let mut r = FloorRound {
            id: 1,
            waiting: 2,
            start: [(10, 8), (11, 4), (12, 6)].into_iter().collect(),
            oldest: HashMap::new(),
        };
        r.answer(&[(10, 5), (11, 6)]);
        r.answer(&[(10, 3), (13, 1)]);
        assert_eq!(r.waiting, 0);
        let mut f: Vec<(u64, u64)> = r.floors().collect();
        f.sort_unstable();
        // 11: a message at 6 but the round started at 4 (a newer send cannot go below 4);
        // 12: no message anywhere; 13 started after the round: not in it.
        assert_eq!(f, [(10, 3), (11, 4), (12, 6)]);
    }

    proptest! {
        /// A group rebuilt from its snapshot (through the record codec, in parts) answers
        /// every version from the floor on as the group with its whole history does.
        #[test]
        fn a_snapshot_answers_like_the_history_it_replaces(
            ops in proptest::collection::vec((any::<bool>(), proptest::collection::vec(2u64..40, 1..6)), 1..40),
            floor_at in any::<u64>(),
            small_parts in any::<bool>(),
        ) {
            let mut g = Group::new(1);
            g.apply(1, &GroupChange::Create { owner: 1, members: vec![] });
            for (i, (is_add, who)) in ops.iter().enumerate() {
                let v = i as u64 + 2;
                g.apply(v, &if *is_add { add(who) } else { remove(who) });
            }
            let full_history = Group { members: g.members.clone(), past: g.past.clone(), ..Group::new(1) };
            let version = g.version();
            let floor = 1 + floor_at % version;
            g.raise_floor(floor);
            let mut parts = g.snapshot_parts();
            if small_parts {
                // Split further, as a big group's snapshot is (same rules, smaller parts).
                let all: Vec<SnapshotPart> = std::mem::take(&mut parts);
                let (m, p): (Vec<_>, Vec<_>) = (all[0].members.clone(), all[0].past.clone());
                let n = (m.len() + p.len()).max(1);
                parts = (0..n).map(|i| SnapshotPart {
                    owner: 1, floor, part: i as u16, parts: n as u16,
                    members: m.get(i).copied().into_iter().collect(),
                    past: if i >= m.len() { p.get(i - m.len()).copied().into_iter().collect() } else { vec![] },
                }).collect();
            }
            let decoded: Vec<SnapshotPart> = parts.iter().rev().map(|p| {
                let mut bytes = Vec::new();
                encode_snapshot(p, &mut bytes);
                decode_snapshot(version, &bytes).unwrap()
            }).collect();
            let back = Group::from_snapshot(version, decoded.clone()).unwrap();
            for v in 1..=version {
                let want = if v < floor { None } else { Some(full_history.members_at(v).unwrap()) };
                prop_assert_eq!(back.members_at(v), want, "version {}", v);
            }
            if decoded.len() > 1 {
                prop_assert!(Group::from_snapshot(version, decoded[1..].to_vec()).is_err());
            }
        }
    }
}
