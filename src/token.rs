//! Client-facing tokens, as pure codecs (R7, R8):
//! - an **auth token** proves which uid a client is (issued by the login side, checked on
//!   every request); PMAC-AES-128 tag;
//! - a **shake token** is what a winning shake returns: the ticket bound to the uid that shook
//!   it and the core that issued it, opaque to the client, checked locally at open time;
//!   CBC-MAC-AES-128 tag over its fixed 48 bytes, under a key derived for shake tokens only.
//!
//! Runs on every server core (the engine builds token bodies, the connection's core signs
//! them when it writes replies: [`TagQueue`] signs a pipelined read's tokens together so their
//! AES blocks overlap) and in tools and tests. No I/O and no clock: callers pass `now`. Each
//! server core holds its own copy of the keys ([`TokenKeys`] is `Send` but not `Sync`).
//! docs/formats/tokens.md is the byte-level reference.

use std::cell::RefCell;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use pmac::{Mac, Pmac};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ticket::{EnvelopeId, TicketRecord};

/// Auth tokens: 1 was CMAC-tagged (never released outside development builds); 2 is
/// PMAC-tagged.
pub const TOKEN_VERSION: u8 = 2;
/// Shake tokens: 3 is CBC-MAC-tagged under the derived shake key. 2 (PMAC under the slot key,
/// issued by builds before 2026-12-01) is still read, so envelopes won before an upgrade open.
pub const SHAKE_TOKEN_VERSION: u8 = 3;
const SHAKE_TOKEN_VERSION_PMAC: u8 = 2;
pub const AUTH_TOKEN_BYTES: usize = 32;
pub const SHAKE_TOKEN_BYTES: usize = 64;
const TAG_BYTES: usize = 16;
/// What a shake token's tag covers: everything before the tag.
pub const SHAKE_BODY_BYTES: usize = SHAKE_TOKEN_BYTES - TAG_BYTES;
/// The shake-token key of a slot is AES-128 under the slot's key of this block, so a key file
/// shared with auth tokens (PMAC under the key itself) still gives the two kinds unrelated keys.
const SHAKE_KEY_LABEL: [u8; 16] = *b"hongbao shake v3";
/// Tokens signed together: the `aes` crate encrypts 8 independent blocks per call.
const TAG_LANES: usize = 8;
/// Key slots are a u8 so keys can be rotated without invalidating tokens in flight.
pub const KEY_SLOTS: usize = 256;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
struct AuthTokenBytes {
    version: u8,
    key_slot: u8,
    reserved: U16,
    expires_unix: U32,
    uid: U64,
    tag: [u8; TAG_BYTES],
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
struct ShakeTokenBytes {
    version: u8,
    key_slot: u8,
    issuing_core: U16,
    issued_unix: U32,
    uid: U64,
    envelope_id: U64,
    ticket_key_id: U16,
    reserved0: U16,
    sealed: [u8; 16],
    reserved1: [u8; 4],
    tag: [u8; TAG_BYTES],
}

const _: () = assert!(std::mem::size_of::<AuthTokenBytes>() == AUTH_TOKEN_BYTES);
const _: () = assert!(std::mem::size_of::<ShakeTokenBytes>() == SHAKE_TOKEN_BYTES);

/// Why a token was refused. None of these says anything about the secret keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not the size of this kind of token.
    #[error("token is {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    /// A token format this build does not read.
    #[error("token version {0} is not supported")]
    Version(u8),
    /// The key slot named by the token holds no key (never issued, or retired).
    #[error("token key slot {0} is not configured")]
    UnknownKey(u8),
    /// The tag does not match: forged, altered, or signed with another key.
    #[error("token tag does not match: forged or altered")]
    BadTag,
    /// An auth token past its expiry time.
    #[error("auth token expired at {expires_unix} (now {now_unix})")]
    Expired { expires_unix: u32, now_unix: u32 },
    /// Text that is not the hex encoding of a token.
    #[error("token is not valid hex")]
    NotHex,
}

/// One slot's keys: the PMAC state of auth tokens and version-2 shake tokens (key schedule and
/// offsets computed once, reset after each tag) and the AES key schedule of shake tokens'
/// CBC-MAC.
#[derive(Clone)]
struct SlotKeys {
    pmac: RefCell<Pmac<Aes128>>,
    shake: Aes128,
}

/// A ring of token keys by slot, with the slot new tokens are signed with.
///
/// Clone it once per core; it is deliberately not `Sync`.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<Option<SlotKeys>>,
    current: u8,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots: Vec<usize> = (0..KEY_SLOTS).filter(|&i| self.keys[i].is_some()).collect();
        f.debug_struct("TokenKeys")
            .field("slots", &slots)
            .field("current", &self.current)
            .finish()
    }
}

impl TokenKeys {
    /// Keys by slot; new tokens are signed with `current`, which must be among them.
    pub fn new(keys: &[(u8, [u8; 16])], current: u8) -> Option<TokenKeys> {
        let mut ring: Vec<Option<SlotKeys>> = vec![None; KEY_SLOTS];
        for (slot, key) in keys {
            let master = <Aes128 as KeyInit>::new(&(*key).into());
            let mut derived = Block::from(SHAKE_KEY_LABEL);
            master.encrypt_block(&mut derived);
            ring[*slot as usize] = Some(SlotKeys {
                pmac: RefCell::new(
                    <Pmac<Aes128> as Mac>::new_from_slice(key).expect("16-byte key"),
                ),
                shake: <Aes128 as KeyInit>::new(&derived),
            });
        }
        ring[current as usize].as_ref()?;
        Some(TokenKeys {
            keys: ring,
            current,
        })
    }

    fn slot(&self, slot: u8) -> Result<&SlotKeys, TokenError> {
        self.keys[slot as usize]
            .as_ref()
            .ok_or(TokenError::UnknownKey(slot))
    }

    /// The slot new tokens are signed with.
    pub fn current(&self) -> u8 {
        self.current
    }

    fn pmac_tag(&self, slot: u8, data: &[u8]) -> Result<[u8; TAG_BYTES], TokenError> {
        let mut mac = self.slot(slot)?.pmac.borrow_mut();
        mac.update(data);
        Ok(mac.finalize_reset().into_bytes().into())
    }

    /// CBC-MAC of one shake-token body: three chained AES blocks.
    fn shake_tag(&self, body: &TokenBody) -> Result<[u8; TAG_BYTES], TokenError> {
        let cipher = &self.slot(body.key_slot())?.shake;
        let mut x = Block::from(body.block(0));
        cipher.encrypt_block(&mut x);
        for i in 1..SHAKE_BODY_BYTES / 16 {
            xor_into(&mut x, &body.block(i));
            cipher.encrypt_block(&mut x);
        }
        Ok(x.into())
    }

    /// CBC-MAC of up to [`TAG_LANES`] bodies signed under one slot (`body(k)` is the k-th of
    /// `n`): block `i` of every body is encrypted in one call, so the chains run side by side.
    fn shake_tags_lanes<'a>(
        &self,
        slot: u8,
        n: usize,
        body: impl Fn(usize) -> &'a TokenBody,
        tags: &mut [[u8; TAG_BYTES]; TAG_LANES],
    ) {
        debug_assert!(n <= TAG_LANES);
        let cipher = &self
            .slot(slot)
            .expect("shake tokens are issued under a configured slot")
            .shake;
        let mut x = [Block::default(); TAG_LANES];
        for (k, lane) in x[..n].iter_mut().enumerate() {
            *lane = Block::from(body(k).block(0));
        }
        cipher.encrypt_blocks(&mut x[..n]);
        for i in 1..SHAKE_BODY_BYTES / 16 {
            for (k, lane) in x[..n].iter_mut().enumerate() {
                xor_into(lane, &body(k).block(i));
            }
            cipher.encrypt_blocks(&mut x[..n]);
        }
        for (tag, lane) in tags.iter_mut().zip(&x[..n]) {
            *tag = (*lane).into();
        }
    }

    /// Signs a shake-token body issued under one of this ring's slots.
    pub fn sign(&self, body: &TokenBody) -> [u8; SHAKE_TOKEN_BYTES] {
        let tag = self
            .shake_tag(body)
            .expect("shake tokens are issued under a configured slot");
        body.with_tag(&tag)
    }

    /// Signs bodies together (their AES chains interleave), appending the tokens to `out`.
    pub fn sign_all(&self, bodies: &[TokenBody], out: &mut Vec<[u8; SHAKE_TOKEN_BYTES]>) {
        let mut tags = [[0u8; TAG_BYTES]; TAG_LANES];
        for same_slot in bodies.chunk_by(|a, b| a.key_slot() == b.key_slot()) {
            for run in same_slot.chunks(TAG_LANES) {
                self.shake_tags_lanes(run[0].key_slot(), run.len(), |k| &run[k], &mut tags);
                for (body, tag) in run.iter().zip(&tags) {
                    out.push(body.with_tag(tag));
                }
            }
        }
    }

    /// Computes every queued tag and writes it where the queue says (raw or as hex text),
    /// in `out`, the reply bytes the tokens were encoded into; empties the queue.
    pub fn sign_queued(&self, queue: &mut TagQueue, out: &mut [u8]) {
        let mut tags = [[0u8; TAG_BYTES]; TAG_LANES];
        for same_slot in queue
            .jobs
            .chunk_by(|a, b| a.body.key_slot() == b.body.key_slot())
        {
            for run in same_slot.chunks(TAG_LANES) {
                let slot = run[0].body.key_slot();
                self.shake_tags_lanes(slot, run.len(), |k| &run[k].body, &mut tags);
                for (job, tag) in run.iter().zip(&tags) {
                    if job.hex {
                        hex::encode_to_slice(tag, &mut out[job.at..job.at + 2 * TAG_BYTES])
                            .expect("sized");
                    } else {
                        out[job.at..job.at + TAG_BYTES].copy_from_slice(tag);
                    }
                }
            }
        }
        queue.jobs.clear();
    }

    fn check(&self, expected: [u8; TAG_BYTES], tag: &[u8]) -> Result<(), TokenError> {
        let Ok(got) = <[u8; TAG_BYTES]>::try_from(tag) else {
            return Err(TokenError::BadTag);
        };
        // Constant time: one 128-bit XOR and one comparison with zero, no early exit (the
        // `subtle` comparison `verify_slice` uses cost ~150 instructions per open).
        let diff = u128::from_ne_bytes(expected) ^ u128::from_ne_bytes(got);
        if std::hint::black_box(diff) == 0 {
            Ok(())
        } else {
            Err(TokenError::BadTag)
        }
    }
}

fn xor_into(x: &mut Block, with: &[u8; 16]) {
    let v = u128::from_ne_bytes((*x).into()) ^ u128::from_ne_bytes(*with);
    *x = Block::from(v.to_ne_bytes());
}

/// A shake token without its tag: what the engine issues. The connection's core signs it when
/// it writes the reply ([`TagQueue`]); [`TokenKeys::sign`] signs one at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBody([u8; SHAKE_BODY_BYTES]);

impl TokenBody {
    pub fn bytes(&self) -> &[u8; SHAKE_BODY_BYTES] {
        &self.0
    }

    fn key_slot(&self) -> u8 {
        self.0[1]
    }

    fn block(&self, i: usize) -> [u8; 16] {
        self.0[16 * i..16 * i + 16].try_into().expect("16 bytes")
    }

    fn with_tag(&self, tag: &[u8; TAG_BYTES]) -> [u8; SHAKE_TOKEN_BYTES] {
        let mut t = [0u8; SHAKE_TOKEN_BYTES];
        t[..SHAKE_BODY_BYTES].copy_from_slice(&self.0);
        t[SHAKE_BODY_BYTES..].copy_from_slice(tag);
        t
    }
}

/// Shake tokens written into a reply buffer without their tags, with where each tag goes:
/// the connection signs them all ([`TokenKeys::sign_queued`]) just before it sends the buffer.
#[derive(Debug, Default)]
pub struct TagQueue {
    jobs: Vec<TagJob>,
}

#[derive(Debug)]
struct TagJob {
    body: TokenBody,
    /// Offset of the tag in the reply buffer.
    at: usize,
    /// The tag is written as 32 hex characters (HTTP) rather than 16 bytes (binary).
    hex: bool,
}

impl TagQueue {
    /// The tag of `body` goes at offset `at` of the reply buffer, as bytes or as hex text.
    pub fn push(&mut self, body: TokenBody, at: usize, hex: bool) {
        self.jobs.push(TagJob { body, at, hex });
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }
}

/// A verified auth token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    pub uid: u64,
    pub expires_unix: u32,
}

impl Auth {
    pub fn encode(&self, keys: &TokenKeys) -> [u8; AUTH_TOKEN_BYTES] {
        let mut t = AuthTokenBytes {
            version: TOKEN_VERSION,
            key_slot: keys.current,
            reserved: U16::new(0),
            expires_unix: U32::new(self.expires_unix),
            uid: U64::new(self.uid),
            tag: [0; TAG_BYTES],
        };
        t.tag = keys
            .pmac_tag(keys.current, &t.as_bytes()[..AUTH_TOKEN_BYTES - TAG_BYTES])
            .expect("current slot has a key");
        let mut out = [0u8; AUTH_TOKEN_BYTES];
        out.copy_from_slice(t.as_bytes());
        out
    }

    /// Checks length, version, tag (in constant time) and expiry.
    pub fn decode(bytes: &[u8], keys: &TokenKeys, now_unix: u32) -> Result<Auth, TokenError> {
        let t = AuthTokenBytes::read_from_bytes(bytes).map_err(|_| TokenError::Length {
            got: bytes.len(),
            expected: AUTH_TOKEN_BYTES,
        })?;
        if t.version != TOKEN_VERSION {
            return Err(TokenError::Version(t.version));
        }
        keys.check(
            keys.pmac_tag(t.key_slot, &bytes[..AUTH_TOKEN_BYTES - TAG_BYTES])?,
            &t.tag,
        )?;
        let expires_unix = t.expires_unix.get();
        if now_unix >= expires_unix {
            return Err(TokenError::Expired {
                expires_unix,
                now_unix,
            });
        }
        Ok(Auth {
            uid: t.uid.get(),
            expires_unix,
        })
    }

    /// Text form (lower-case hex) for HTTP headers and the binary protocol's HELLO.
    pub fn encode_hex(&self, keys: &TokenKeys) -> String {
        hex::encode(self.encode(keys))
    }

    pub fn decode_hex(
        text: impl AsRef<[u8]>,
        keys: &TokenKeys,
        now_unix: u32,
    ) -> Result<Auth, TokenError> {
        let text = text.as_ref();
        let mut bytes = [0u8; AUTH_TOKEN_BYTES];
        if text.len() != 2 * AUTH_TOKEN_BYTES {
            return Err(TokenError::Length {
                got: text.len() / 2,
                expected: AUTH_TOKEN_BYTES,
            });
        }
        hex::decode_to_slice(text, &mut bytes).map_err(|_| TokenError::NotHex)?;
        Auth::decode(&bytes, keys, now_unix)
    }
}

/// A verified shake token: which ticket was handed to which user, by which core, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shake {
    pub uid: u64,
    pub issuing_core: u16,
    pub issued_unix: u32,
    /// The ticket as it is in the shard file (clear part and sealed block).
    pub ticket: TicketRecord,
}

impl Shake {
    pub fn envelope_id(&self) -> EnvelopeId {
        EnvelopeId(self.ticket.envelope_id.get())
    }

    /// The token without its tag, to be signed under `key_slot` (the ring's current slot).
    pub fn body(&self, key_slot: u8) -> TokenBody {
        let t = ShakeTokenBytes {
            version: SHAKE_TOKEN_VERSION,
            key_slot,
            issuing_core: U16::new(self.issuing_core),
            issued_unix: U32::new(self.issued_unix),
            uid: U64::new(self.uid),
            envelope_id: self.ticket.envelope_id,
            ticket_key_id: self.ticket.key_id,
            reserved0: U16::new(0),
            sealed: self.ticket.sealed,
            reserved1: [0; 4],
            tag: [0; TAG_BYTES],
        };
        TokenBody(
            t.as_bytes()[..SHAKE_BODY_BYTES]
                .try_into()
                .expect("48 bytes"),
        )
    }

    /// The whole token, signed under the ring's current slot.
    pub fn encode(&self, keys: &TokenKeys) -> [u8; SHAKE_TOKEN_BYTES] {
        keys.sign(&self.body(keys.current))
    }

    /// Checks length, version and tag (in constant time). Whether the uid matches the caller,
    /// whether the ticket opens under the keyring and its key lists, and whether it was already
    /// claimed are the open path's checks, not the codec's.
    pub fn decode(bytes: &[u8], keys: &TokenKeys) -> Result<Shake, TokenError> {
        let t = ShakeTokenBytes::read_from_bytes(bytes).map_err(|_| TokenError::Length {
            got: bytes.len(),
            expected: SHAKE_TOKEN_BYTES,
        })?;
        let body = TokenBody(bytes[..SHAKE_BODY_BYTES].try_into().expect("48 bytes"));
        let expected = match t.version {
            SHAKE_TOKEN_VERSION => keys.shake_tag(&body)?,
            SHAKE_TOKEN_VERSION_PMAC => keys.pmac_tag(t.key_slot, body.bytes())?,
            v => return Err(TokenError::Version(v)),
        };
        keys.check(expected, &t.tag)?;
        Ok(Shake {
            uid: t.uid.get(),
            issuing_core: t.issuing_core.get(),
            issued_unix: t.issued_unix.get(),
            ticket: TicketRecord {
                key_id: t.ticket_key_id,
                envelope_id: t.envelope_id,
                sealed: t.sealed,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{KeyEntry, Keyring, Ticket};
    use proptest::prelude::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[(1, [11; 16]), (2, [22; 16])], 2).unwrap()
    }

    fn shake() -> Shake {
        let ring = Keyring::new(
            [0; 32],
            0,
            vec![KeyEntry {
                key_id: 3,
                shard_ordinal: 9,
                key: [5; 16],
            }],
        )
        .unwrap();
        let ticket = TicketRecord::seal(
            &Ticket {
                envelope_id: EnvelopeId::new(9, 77),
                amount_cents: 888,
                batch_id: 4,
                key_id: 3,
            },
            ring.cipher(3).unwrap(),
        );
        Shake {
            uid: 123_456_789,
            issuing_core: 1,
            issued_unix: 1_800_000_000,
            ticket,
        }
    }

    #[test]
    fn shake_round_trip_keeps_the_ticket_sealed() {
        let s = shake();
        let bytes = s.encode(&keys());
        assert_eq!(Shake::decode(&bytes, &keys()), Ok(s));
        // The amount is only inside the sealed block: 888 appears nowhere in clear.
        assert!(!bytes.windows(4).any(|w| w == 888u32.to_le_bytes()));
    }

    #[test]
    fn auth_round_trip_expiry_and_rotation() {
        let a = Auth {
            uid: 42,
            expires_unix: 2_000,
        };
        let text = a.encode_hex(&keys());
        assert_eq!(Auth::decode_hex(&text, &keys(), 1_999), Ok(a));
        assert_eq!(
            Auth::decode_hex(&text, &keys(), 2_000),
            Err(TokenError::Expired {
                expires_unix: 2_000,
                now_unix: 2_000
            })
        );
        // Signed with slot 2; a ring that retired slot 2 refuses it, one that kept it accepts it.
        let retired = TokenKeys::new(&[(1, [11; 16]), (3, [33; 16])], 3).unwrap();
        assert_eq!(
            Auth::decode_hex(&text, &retired, 1),
            Err(TokenError::UnknownKey(2))
        );
        let rotated = TokenKeys::new(&[(2, [22; 16]), (3, [33; 16])], 3).unwrap();
        assert_eq!(Auth::decode_hex(&text, &rotated, 1), Ok(a));
        // Same slot number, different key: the tag does not match.
        let other = TokenKeys::new(&[(2, [99; 16])], 2).unwrap();
        assert_eq!(Auth::decode_hex(&text, &other, 1), Err(TokenError::BadTag));
        assert_eq!(
            Auth::decode_hex("zz", &keys(), 1),
            Err(TokenError::Length {
                got: 1,
                expected: 32
            })
        );
        assert_eq!(
            Auth::decode_hex("g".repeat(64), &keys(), 1),
            Err(TokenError::NotHex)
        );
    }

    /// The known-answer vector of docs/formats/tokens.md: a login side written in another
    /// language checks its PMAC against it.
    #[test]
    fn auth_token_known_answer() {
        let keys = TokenKeys::new(&[(1, [0x11; 16])], 1).unwrap();
        let auth = Auth {
            uid: 42,
            expires_unix: 2_000_000_000,
        };
        assert_eq!(
            auth.encode_hex(&keys),
            "02010000009435772a0000000000000040eee96c4a4cda8d15426042a01dc816"
        );
    }

    /// The construction of docs/formats/tokens.md, computed here from the block cipher alone:
    /// the slot key encrypts the label into the shake key, which CBC-MACs the 48-byte body.
    #[test]
    fn shake_tag_is_cbc_mac_under_the_derived_key() {
        let key = [22u8; 16]; // slot 2 of `keys()`
        let shake_key = {
            let mut b = Block::from(*b"hongbao shake v3");
            <Aes128 as KeyInit>::new(&key.into()).encrypt_block(&mut b);
            b
        };
        let cipher = <Aes128 as KeyInit>::new(&shake_key);
        let token = shake().encode(&keys());
        let mut x = [0u8; 16];
        for block in token[..48].chunks(16) {
            let mut b = Block::default();
            for i in 0..16 {
                b[i] = x[i] ^ block[i];
            }
            cipher.encrypt_block(&mut b);
            x = b.into();
        }
        assert_eq!(token[48..], x);
        assert_eq!(token[0], SHAKE_TOKEN_VERSION);
        assert_eq!(token[1], 2, "signed under the current slot");
    }

    /// Shake tokens of the previous format (version 2, PMAC under the slot key) still open;
    /// a version-2 token with a CBC-MAC tag, or an unknown version, does not.
    #[test]
    fn shake_tokens_of_version_2_still_open() {
        let s = shake();
        let mut old = s.encode(&keys());
        old[0] = 2;
        let mut pmac = <Pmac<Aes128> as Mac>::new_from_slice(&[22; 16]).unwrap();
        pmac.update(&old[..48]);
        let tag: [u8; 16] = pmac.finalize().into_bytes().into();
        let cbc = old[48..].to_vec();
        old[48..].copy_from_slice(&tag);
        assert_eq!(Shake::decode(&old, &keys()), Ok(s));
        old[48..].copy_from_slice(&cbc);
        assert_eq!(Shake::decode(&old, &keys()), Err(TokenError::BadTag));
        old[0] = 4;
        assert_eq!(Shake::decode(&old, &keys()), Err(TokenError::Version(4)));
    }

    #[test]
    fn current_slot_must_have_a_key() {
        assert!(TokenKeys::new(&[(1, [1; 16])], 2).is_none());
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_refused(bit in 0usize..(SHAKE_TOKEN_BYTES * 8)) {
            let mut bytes = shake().encode(&keys());
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Shake::decode(&bytes, &keys()).is_err());
        }

        #[test]
        fn any_flipped_auth_bit_is_refused(bit in 0usize..(AUTH_TOKEN_BYTES * 8)) {
            let mut bytes = Auth { uid: 7, expires_unix: u32::MAX }.encode(&keys());
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Auth::decode(&bytes, &keys(), 0).is_err());
        }

        /// Signing together (any count, runs of several slots, raw and hex places in a reply
        /// buffer) gives exactly the tags of signing one at a time.
        #[test]
        fn batched_signing_matches_one_at_a_time(
            tokens in proptest::collection::vec((any::<u64>(), any::<bool>(), any::<bool>()), 0..40),
        ) {
            let ring = TokenKeys::new(&[(1, [11; 16]), (2, [22; 16])], 2).unwrap();
            let bodies: Vec<TokenBody> = tokens
                .iter()
                .map(|&(uid, old_slot, _)| Shake { uid, ..shake() }.body(if old_slot { 1 } else { 2 }))
                .collect();
            let one_by_one: Vec<[u8; SHAKE_TOKEN_BYTES]> = bodies.iter().map(|b| ring.sign(b)).collect();
            let mut together = Vec::new();
            ring.sign_all(&bodies, &mut together);
            prop_assert_eq!(&together, &one_by_one);
            // In a reply buffer: each token at a staggered place, its tag raw or as hex.
            let mut out = vec![b'.'; 3];
            let mut queue = TagQueue::default();
            let mut places = Vec::new();
            for (body, &(_, _, hex)) in bodies.iter().zip(&tokens) {
                let at = out.len();
                if hex {
                    out.extend_from_slice(hex::encode(body.bytes()).as_bytes());
                    out.extend_from_slice(&[b'0'; 32]);
                    queue.push(*body, at + 96, true);
                } else {
                    out.extend_from_slice(body.bytes());
                    out.extend_from_slice(&[0; 16]);
                    queue.push(*body, at + 48, false);
                }
                places.push((at, hex));
                out.push(b'|');
            }
            prop_assert_eq!(queue.len(), bodies.len());
            ring.sign_queued(&mut queue, &mut out);
            prop_assert!(queue.is_empty());
            for ((at, hex), token) in places.into_iter().zip(&one_by_one) {
                if hex {
                    let text = hex::encode(token);
                    prop_assert_eq!(&out[at..at + 128], text.as_bytes());
                    prop_assert_eq!(out[at + 128], b'|');
                } else {
                    prop_assert_eq!(&out[at..at + 64], &token[..]);
                    prop_assert_eq!(out[at + 64], b'|');
                }
            }
        }

        #[test]
        fn arbitrary_bytes_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert!(Shake::decode(&bytes, &keys()).is_err());
            prop_assert!(Auth::decode(&bytes, &keys(), 0).is_err());
        }
    }
}
