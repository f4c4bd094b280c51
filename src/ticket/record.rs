//! The 26-byte ticket record and its 16-byte secret block (R4); sealing and opening one record.
//!
//! Pure codec, no I/O: used by the generator threads, by `verify`, and later by every server
//! core on its own shard. docs/formats/tickets.md is the byte-level reference.

use aes::cipher::{BlockDecrypt, BlockEncrypt};
use aes::{Aes128, Block};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::keyring::Keyring;

/// Size of one record on disk.
pub const RECORD_BYTES: usize = 26;

/// An envelope id: the shard file's ordinal in the high 32 bits, the record's index in that file
/// in the low 32 bits. Unique across an event by construction (every file of every variant has
/// its own ordinal) and checked by `verify` against the record's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvelopeId(pub u64);

impl EnvelopeId {
    pub fn new(shard_ordinal: u32, index: u32) -> EnvelopeId {
        EnvelopeId(((shard_ordinal as u64) << 32) | index as u64)
    }
    pub fn shard_ordinal(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn index(self) -> u32 {
        self.0 as u32
    }
}

impl std::fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}:{}", self.shard_ordinal(), self.index())
    }
}

/// One ticket as stored: a clear part the server reads without decrypting, then the sealed
/// block. Little-endian, unaligned, no padding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TicketRecord {
    /// Which key sealed the block; 0 is never a valid key id.
    pub key_id: U16,
    /// The envelope id in clear, so a record names itself without a key.
    pub envelope_id: U64,
    /// AES-128 of a [`SecretBlock`] under key `key_id`.
    pub sealed: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<TicketRecord>() == RECORD_BYTES);

/// The plaintext of the sealed block. `envelope_id` and `key_id` repeat the clear part: that is
/// the redundancy that makes a tampered or forged block fail to open (80 bits must match after
/// a decrypt that scrambles every bit of a changed block).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SecretBlock {
    pub envelope_id: U64,
    pub amount_cents: U32,
    pub batch_id: U16,
    pub key_id: U16,
}

const _: () = assert!(std::mem::size_of::<SecretBlock>() == 16);

/// What a ticket holds once opened and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub envelope_id: EnvelopeId,
    pub amount_cents: u32,
    pub batch_id: u16,
    pub key_id: u16,
}

/// Why a record does not open. Each variant means the record was damaged, tampered with,
/// moved, or forged; none is an I/O problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The clear key id names no key in the keyring: forged, or sealed by another event.
    #[error("key id {key_id} is not in the keyring")]
    UnknownKey { key_id: u16 },
    /// The key id inside the block differs from the clear one: the block or the clear key id
    /// was altered, or the block was sealed under another key.
    #[error("sealed key id {inner} does not match clear key id {clear}")]
    KeyMismatch { clear: u16, inner: u16 },
    /// The envelope id inside the block differs from the clear one.
    #[error("sealed envelope id {inner} does not match clear envelope id {clear}")]
    EnvelopeMismatch {
        clear: EnvelopeId,
        inner: EnvelopeId,
    },
}

impl SecretBlock {
    pub fn new(ticket: &Ticket) -> SecretBlock {
        SecretBlock {
            envelope_id: U64::new(ticket.envelope_id.0),
            amount_cents: U32::new(ticket.amount_cents),
            batch_id: U16::new(ticket.batch_id),
            key_id: U16::new(ticket.key_id),
        }
    }

    pub fn to_block(self) -> Block {
        Block::clone_from_slice(self.as_bytes())
    }

    pub fn from_block(block: &Block) -> SecretBlock {
        // A Block is exactly 16 bytes, so this read cannot fail.
        SecretBlock::read_from_bytes(block.as_slice()).expect("16-byte block")
    }
}

impl TicketRecord {
    /// The clear part of a record for `ticket`, with the block not yet sealed.
    pub fn unsealed(ticket: &Ticket) -> TicketRecord {
        TicketRecord {
            key_id: U16::new(ticket.key_id),
            envelope_id: U64::new(ticket.envelope_id.0),
            sealed: [0; 16],
        }
    }

    /// Seals one ticket. Bulk paths (generator, verifier) seal/open many blocks per AES call.
    pub fn seal(ticket: &Ticket, cipher: &Aes128) -> TicketRecord {
        let mut block = SecretBlock::new(ticket).to_block();
        cipher.encrypt_block(&mut block);
        let mut record = TicketRecord::unsealed(ticket);
        record.sealed.copy_from_slice(&block);
        record
    }

    /// Opens and checks one record with the keyring.
    pub fn open(&self, keyring: &Keyring) -> Result<Ticket, OpenError> {
        let key_id = self.key_id.get();
        let cipher = keyring
            .cipher(key_id)
            .ok_or(OpenError::UnknownKey { key_id })?;
        let mut block = Block::clone_from_slice(&self.sealed);
        cipher.decrypt_block(&mut block);
        self.check(&SecretBlock::from_block(&block))
    }

    /// Checks a decrypted block against this record's clear part.
    #[inline]
    pub fn check(&self, secret: &SecretBlock) -> Result<Ticket, OpenError> {
        let clear_key = self.key_id.get();
        let inner_key = secret.key_id.get();
        if clear_key != inner_key {
            return Err(OpenError::KeyMismatch {
                clear: clear_key,
                inner: inner_key,
            });
        }
        let clear_id = EnvelopeId(self.envelope_id.get());
        let inner_id = EnvelopeId(secret.envelope_id.get());
        if clear_id != inner_id {
            return Err(OpenError::EnvelopeMismatch {
                clear: clear_id,
                inner: inner_id,
            });
        }
        Ok(Ticket {
            envelope_id: clear_id,
            amount_cents: secret.amount_cents.get(),
            batch_id: secret.batch_id.get(),
            key_id: clear_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::keyring::KeyEntry;
    use proptest::prelude::*;

    fn keyring() -> Keyring {
        Keyring::new(
            [7; 32],
            1,
            vec![
                KeyEntry {
                    key_id: 1,
                    shard_ordinal: 0,
                    key: [1; 16],
                },
                KeyEntry {
                    key_id: 2,
                    shard_ordinal: 0,
                    key: [2; 16],
                },
            ],
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(shard: u32, index: u32, amount: u32, batch: u16, key in 1u16..=2) {
            let ring = keyring();
            let ticket = Ticket { envelope_id: EnvelopeId::new(shard, index), amount_cents: amount, batch_id: batch, key_id: key };
            let record = TicketRecord::seal(&ticket, ring.cipher(key).unwrap());
            prop_assert_eq!(record.as_bytes().len(), RECORD_BYTES);
            let parsed = TicketRecord::read_from_bytes(record.as_bytes()).unwrap();
            prop_assert_eq!(parsed.open(&ring), Ok(ticket));
        }

        #[test]
        fn any_flipped_bit_is_caught(bit in 0usize..(RECORD_BYTES * 8), amount: u32) {
            let ring = keyring();
            let ticket = Ticket { envelope_id: EnvelopeId::new(3, 9), amount_cents: amount, batch_id: 4, key_id: 1 };
            let record = TicketRecord::seal(&ticket, ring.cipher(1).unwrap());
            let mut bytes = record.as_bytes().to_vec();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let tampered = TicketRecord::read_from_bytes(&bytes[..]).unwrap();
            prop_assert!(tampered.open(&ring).is_err());
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let ring = keyring();
        let ticket = Ticket {
            envelope_id: EnvelopeId::new(1, 1),
            amount_cents: 5,
            batch_id: 1,
            key_id: 1,
        };
        let mut record = TicketRecord::seal(&ticket, ring.cipher(1).unwrap());
        record.key_id = U16::new(9);
        assert_eq!(record.open(&ring), Err(OpenError::UnknownKey { key_id: 9 }));
        record.key_id = U16::new(2);
        assert!(matches!(
            record.open(&ring),
            Err(OpenError::KeyMismatch { .. } | OpenError::EnvelopeMismatch { .. })
        ));
    }
}
