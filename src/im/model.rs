//! The IM data model (R16-R24): message identities, targets, classes, the message itself as
//! every stream holds it, limits, and the errors an IM request can end in. Plain values, shared
//! by the per-core engine ([`super::engine`]), the log records ([`super::record`]) and, later,
//! the wire protocol. Runs anywhere; no I/O.

use std::sync::Arc;

/// Largest message body, in bytes. Keeps one merged delivery record (docs/formats/log.md) far
/// below the record limit even for the largest group.
pub const BODY_MAX: usize = 16 * 1024;
/// Most members of one group (R21 asks for 10,000 "and beyond"). One delivery record carries a
/// message to every member homed on one core (16 bytes each), so the bound keeps it in one
/// record: 50,000 x 16 B = 800 KB < 1 MiB.
pub const GROUP_MEMBERS_MAX: usize = 50_000;
/// Uids per page of a read list (one reply frame).
pub const READ_LIST_PAGE: usize = 8000;
/// How long a send's appinfo is remembered: a retry within it returns the original result (R18).
pub const DEDUPE_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How long after its send a message can be withdrawn (R20).
pub const WITHDRAW_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// A message's identity: its sender and the seq it got in the sender's own stream. Unique
/// because a stream's seqs are (the sender's home core numbers them one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub sender: u64,
    pub seq: u64,
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.sender, self.seq)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A single chat with one user.
    User(u64),
    /// Every member of a group.
    Group(u64),
}

impl Target {
    pub fn code(self) -> u8 {
        match self {
            Target::User(_) => 1,
            Target::Group(_) => 2,
        }
    }
    pub fn id(self) -> u64 {
        match self {
            Target::User(id) | Target::Group(id) => id,
        }
    }
    pub fn from_parts(code: u8, id: u64) -> Option<Target> {
        match code {
            1 => Some(Target::User(id)),
            2 => Some(Target::Group(id)),
            _ => None,
        }
    }
}

/// What kind of traffic a message is (R22: priority and rate limits depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    /// A person chatting.
    Chat = 1,
    /// Sent through the server API by a business system.
    Api = 2,
    /// Sent by an app integration (bots, notifications).
    App = 3,
    /// Control traffic (typing, presence); dropped for huge groups (R22).
    Control = 4,
}

impl Class {
    pub fn from_u8(v: u8) -> Option<Class> {
        match v {
            1 => Some(Class::Chat),
            2 => Some(Class::Api),
            3 => Some(Class::App),
            4 => Some(Class::Control),
            _ => None,
        }
    }
}

/// What a stream entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A message.
    Message = 1,
    /// A read receipt (R19): the sender read message `refer`; goes to the reader's stream and
    /// to the stream of `refer`'s sender.
    Read = 2,
    /// A withdrawal (R20): message `refer` is withdrawn; carries its appinfo and sent_ms and
    /// goes to every stream that got it.
    Withdraw = 3,
}

impl EntryKind {
    pub fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            1 => Some(EntryKind::Message),
            2 => Some(EntryKind::Read),
            3 => Some(EntryKind::Withdraw),
            _ => None,
        }
    }
}

/// A message as a stream holds it. One allocation per message per core: every stream on the
/// core that holds the message shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MsgId,
    pub kind: EntryKind,
    /// The message a receipt or withdrawal refers to.
    pub refer: Option<MsgId>,
    /// Client-chosen, globally unique per send (R18).
    pub appinfo: u128,
    pub to: Target,
    pub class: Class,
    /// Server time when the sender's home core accepted it, Unix milliseconds.
    pub sent_ms: u64,
    pub body: Box<[u8]>,
}

/// A shared message.
pub type MessageRef = Arc<Message>;

/// A send as the sender's home core receives it (already authenticated: `sender` is the
/// connection's uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub sender: u64,
    pub appinfo: u128,
    pub to: Target,
    pub class: Class,
    pub body: Box<[u8]>,
}

/// A request about an entry of the user's own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnOp {
    /// Read receipt for the message at the seq.
    AckRead,
    /// Withdraw the user's message at the seq.
    Withdraw,
    /// Who read the user's message at the seq and who has not: the page from an index.
    ReadList { from: u32 },
}

/// Why an IM request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ImError {
    #[error("message body over {BODY_MAX} bytes")]
    BodyTooLarge,
    #[error("no such group")]
    NoSuchGroup,
    #[error("the group exists already")]
    GroupExists,
    #[error("the sender is not a member of the group")]
    NotMember,
    #[error("only the group's owner may do this")]
    NotOwner,
    #[error("the group would exceed {GROUP_MEMBERS_MAX} members")]
    GroupFull,
    #[error("the same appinfo was used for a different message")]
    AppinfoReused,
    #[error("no message of yours at that seq in your stream")]
    NoSuchMessage,
    #[error("only messages younger than 24 hours can be withdrawn")]
    WithdrawExpired,
    #[error("control messages are not delivered to groups of 2,000 members or more")]
    ControlDropped,
    #[error("the log is not keeping up; retry after the back-off hint")]
    Busy,
}

/// A finished IM request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImReply {
    /// The message is durable in the sender's stream and will reach every recipient.
    /// `duplicate`: this was a retry of an earlier send with the same appinfo, answered with
    /// the original result and stored nothing new.
    Sent {
        seq: u64,
        sent_ms: u64,
        duplicate: bool,
    },
    /// Soft failure (R23): the core could not store the message now (its log is behind) and
    /// holds it, retrying for up to 30 minutes; it appears in the sender's stream once stored
    /// (PUSH). Not durable yet: a retry with the same appinfo answers `Accepted` again while
    /// it waits, the stored result once stored, and stores it if a crash lost it.
    Accepted {
        accepted_ms: u64,
    },
    /// A group change is durable.
    Group {
        gid: u64,
        version: u64,
        members: u32,
    },
    /// A read list (R19), one page: of the `read` recipients who read the message and the
    /// `unread` who have not, `uids` are those at index `from` onwards of the readers (sorted)
    /// followed by the unread (sorted), at most [`READ_LIST_PAGE`].
    Readers {
        seq: u64,
        read: u32,
        unread: u32,
        from: u32,
        uids: Vec<u64>,
    },
    Error(ImError),
}
