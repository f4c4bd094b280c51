//! Client-facing tokens, as pure codecs with PMAC-AES-128 tags (R7, R8):
//! - an **auth token** proves which uid a client is (issued by the login side, checked on
//!   every request);
//! - a **shake token** is what a winning shake returns: the ticket bound to the uid that shook
//!   it and the core that issued it, opaque to the client, checked locally at open time.
//!
//! No I/O and no clock: callers pass `now`. Each server core holds its own copy of the keys
//! ([`TokenKeys`] is `Send` but not `Sync`): a tag is computed in a keyed MAC state that is reset
//! after use instead of cloned, which is what makes a tag cost about two AES latencies.
//! docs/formats/tokens.md is the byte-level reference.

use std::cell::RefCell;

use aes::Aes128;
use pmac::{Mac, Pmac};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ticket::{EnvelopeId, TicketRecord};

/// 1 was CMAC-tagged (never released outside development builds); 2 is PMAC-tagged.
pub const TOKEN_VERSION: u8 = 2;
pub const AUTH_TOKEN_BYTES: usize = 32;
pub const SHAKE_TOKEN_BYTES: usize = 64;
const TAG_BYTES: usize = 16;
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

/// A ring of PMAC keys by slot, with the slot new tokens are signed with.
///
/// Each slot holds a keyed MAC state (key schedule and PMAC offsets computed once); a tag runs
/// in it and resets it. PMAC rather than CMAC because its blocks are independent: the AES
/// rounds of a 48-byte token overlap in the pipeline instead of chaining (docs/BENCHMARKS.md).
/// Clone it once per core; it is deliberately not `Sync`.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<Option<RefCell<Pmac<Aes128>>>>,
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
        let mut ring: Vec<Option<RefCell<Pmac<Aes128>>>> = vec![None; KEY_SLOTS];
        for (slot, key) in keys {
            ring[*slot as usize] = Some(RefCell::new(
                <Pmac<Aes128> as Mac>::new_from_slice(key).expect("16-byte key"),
            ));
        }
        ring[current as usize].as_ref()?;
        Some(TokenKeys {
            keys: ring,
            current,
        })
    }

    fn tag(&self, slot: u8, data: &[u8]) -> Result<[u8; TAG_BYTES], TokenError> {
        let mut mac = self.keys[slot as usize]
            .as_ref()
            .ok_or(TokenError::UnknownKey(slot))?
            .borrow_mut();
        mac.update(data);
        Ok(mac.finalize_reset().into_bytes().into())
    }

    fn check(&self, slot: u8, data: &[u8], tag: &[u8]) -> Result<(), TokenError> {
        let mut mac = self.keys[slot as usize]
            .as_ref()
            .ok_or(TokenError::UnknownKey(slot))?
            .borrow_mut();
        mac.update(data);
        let expected: [u8; TAG_BYTES] = mac.finalize_reset().into_bytes().into();
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
            .tag(keys.current, &t.as_bytes()[..AUTH_TOKEN_BYTES - TAG_BYTES])
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
        keys.check(t.key_slot, &bytes[..AUTH_TOKEN_BYTES - TAG_BYTES], &t.tag)?;
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

    pub fn encode(&self, keys: &TokenKeys) -> [u8; SHAKE_TOKEN_BYTES] {
        let mut t = ShakeTokenBytes {
            version: TOKEN_VERSION,
            key_slot: keys.current,
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
        t.tag = keys
            .tag(keys.current, &t.as_bytes()[..SHAKE_TOKEN_BYTES - TAG_BYTES])
            .expect("current slot has a key");
        let mut out = [0u8; SHAKE_TOKEN_BYTES];
        out.copy_from_slice(t.as_bytes());
        out
    }

    /// Checks length, version and tag (in constant time). Whether the uid matches the caller,
    /// whether the ticket opens under the keyring and its key lists, and whether it was already
    /// claimed are the open path's checks, not the codec's.
    pub fn decode(bytes: &[u8], keys: &TokenKeys) -> Result<Shake, TokenError> {
        let t = ShakeTokenBytes::read_from_bytes(bytes).map_err(|_| TokenError::Length {
            got: bytes.len(),
            expected: SHAKE_TOKEN_BYTES,
        })?;
        if t.version != TOKEN_VERSION {
            return Err(TokenError::Version(t.version));
        }
        keys.check(t.key_slot, &bytes[..SHAKE_TOKEN_BYTES - TAG_BYTES], &t.tag)?;
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

        #[test]
        fn arbitrary_bytes_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert!(Shake::decode(&bytes, &keys()).is_err());
            prop_assert!(Auth::decode(&bytes, &keys(), 0).is_err());
        }
    }
}
