//! Binary protocol framing: a 16-byte little-endian header (length, version, op, flags,
//! request id) followed by the payload. A streaming decoder turns arbitrary chunks of a byte
//! stream into frames; an encoder appends frames to an output buffer.
//!
//! Sans-IO: bytes in, frames out. Runs on the core that owns the connection. What each op's
//! payload holds is the protocol's business (docs/PROTOCOL.md, with the server); this layer
//! only guarantees bounded, well-formed frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest frame, header included. Requests are tiny (a 64-byte token at most); the bound keeps
/// a hostile length field from making a connection buffer grow.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
pub const PROTOCOL_VERSION: u8 = 1;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    /// Whole frame length, header included.
    pub length: U32,
    pub version: u8,
    pub op: u8,
    pub flags: U16,
    /// Chosen by the client, echoed in the reply: lets a client pipeline requests.
    pub request_id: U64,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_BYTES);

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub op: u8,
    pub flags: u16,
    pub request_id: u64,
    pub payload: Bytes,
}

/// A framing problem. `Recoverable` ones consumed exactly one frame, so the connection can
/// answer with an error frame and go on; the others leave no way to find the next frame, so the
/// connection must be answered once and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is smaller than a header: the stream is not this protocol.
    #[error("frame length {0} is smaller than the {FRAME_HEADER_BYTES}-byte header")]
    TooShort(u32),
    /// The length field exceeds the frame limit.
    #[error("frame length {0} exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLong(u32),
    /// A whole frame of a protocol version this server does not speak; it was skipped.
    #[error("protocol version {version} is not supported (this server speaks {PROTOCOL_VERSION})")]
    Version { version: u8, request_id: u64 },
}

impl FrameError {
    /// Whether the connection can continue after answering this error.
    pub fn recoverable(&self) -> bool {
        matches!(self, FrameError::Version { .. })
    }

    /// The request id to answer with, when the frame got far enough to have one.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            FrameError::Version { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }
}

/// Accumulates stream bytes and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The buffer input is appended to (a reader may hand its own buffer over when this one is
    /// empty, without a copy).
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Lets go of the buffer's memory when nothing is buffered (an idle connection then holds
    /// none; frames already decoded keep their own reference).
    pub fn release_if_empty(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            self.buffer = BytesMut::new();
        }
    }

    /// Bytes held for an incomplete frame (bounded by FRAME_BYTES_MAX once a header is seen).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or a framing error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let header =
            FrameHeader::read_from_bytes(&self.buffer[..FRAME_HEADER_BYTES]).expect("16 bytes");
        let length = header.length.get();
        if (length as usize) < FRAME_HEADER_BYTES {
            return Err(FrameError::TooShort(length));
        }
        if length as usize > FRAME_BYTES_MAX {
            return Err(FrameError::TooLong(length));
        }
        if self.buffer.len() < length as usize {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(length as usize);
        frame.advance(FRAME_HEADER_BYTES);
        if header.version != PROTOCOL_VERSION {
            return Err(FrameError::Version {
                version: header.version,
                request_id: header.request_id.get(),
            });
        }
        Ok(Some(Frame {
            op: header.op,
            flags: header.flags.get(),
            request_id: header.request_id.get(),
            payload: frame.freeze(),
        }))
    }
}

/// Appends one frame to `out`. Panics if the payload would exceed the frame limit: replies are
/// built by the server, which knows their sizes.
pub fn encode_frame(op: u8, flags: u16, request_id: u64, payload: &[u8], out: &mut BytesMut) {
    let length = FRAME_HEADER_BYTES + payload.len();
    assert!(length <= FRAME_BYTES_MAX, "reply frame too large");
    let header = FrameHeader {
        length: U32::new(length as u32),
        version: PROTOCOL_VERSION,
        op,
        flags: U16::new(flags),
        request_id: U64::new(request_id),
    };
    out.reserve(length);
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of frames, cut into any chunks, decodes to the same frames.
        #[test]
        fn chunking_does_not_matter(
            frames in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..20),
            cuts in proptest::collection::vec(1usize..50, 1..400),
        ) {
            let mut wire = BytesMut::new();
            for (op, flags, id, payload) in &frames {
                encode_frame(*op, *flags, *id, payload, &mut wire);
            }
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                decoder.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = decoder.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), frames.len());
            for (f, (op, flags, id, payload)) in got.iter().zip(&frames) {
                prop_assert_eq!((f.op, f.flags, f.request_id, &f.payload[..]), (*op, *flags, *id, &payload[..]));
            }
            prop_assert_eq!(decoder.buffered(), 0);
        }

        /// Garbage never panics, and whenever the decoder waits for more bytes the frame it
        /// waits for fits the limit: a hostile length cannot make a connection buffer grow.
        #[test]
        fn garbage_is_refused_or_waits_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut decoder = FrameDecoder::new();
            decoder.extend(&bytes);
            loop {
                match decoder.next_frame() {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        if decoder.buffered() >= FRAME_HEADER_BYTES {
                            let length = u32::from_le_bytes(decoder.buffer[..4].try_into().unwrap());
                            prop_assert!((FRAME_HEADER_BYTES..=FRAME_BYTES_MAX).contains(&(length as usize)));
                            prop_assert!(decoder.buffered() < length as usize);
                        }
                        break;
                    }
                    Err(e) if e.recoverable() => continue,
                    Err(e) => {
                        prop_assert!(matches!(e, FrameError::TooShort(_) | FrameError::TooLong(_)));
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn bad_lengths_close_and_bad_versions_continue() {
        let mut d = FrameDecoder::new();
        d.extend(&[3, 0, 0, 0, 1, 2, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::TooShort(3)));
        assert!(!FrameError::TooShort(3).recoverable());
        let mut d = FrameDecoder::new();
        d.extend(&(1_000_000u32).to_le_bytes());
        d.extend(&[0; 12]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(1_000_000)));
        // A frame of version 9 is skipped whole, with its request id, and the next one decodes.
        let mut wire = BytesMut::new();
        encode_frame(2, 0, 41, b"xy", &mut wire);
        wire[4] = 9;
        encode_frame(2, 0, 42, b"", &mut wire);
        let mut d = FrameDecoder::new();
        d.extend(&wire);
        let e = d.next_frame().unwrap_err();
        assert!(e.recoverable());
        assert_eq!(e.request_id(), Some(41));
        assert_eq!(d.next_frame().unwrap().unwrap().request_id, 42);
        // A header alone is not enough for a frame with a payload.
        let mut wire = BytesMut::new();
        encode_frame(3, 0, 1, &[0; 64], &mut wire);
        let mut d = FrameDecoder::new();
        d.extend(&wire[..FRAME_HEADER_BYTES + 10]);
        assert_eq!(d.next_frame(), Ok(None));
    }
}
