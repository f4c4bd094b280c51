//! A small blocking client of the binary protocol (docs/PROTOCOL.md), with pipelining: used by
//! the demo, the integration and crash tests, and as a reference for client writers. The load
//! generator (`hongbao load`, src/load/) is a different, io_uring-based program.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;

use crate::im::{Class, Target};
use crate::wire::frame::FrameDecoder;
use crate::wire::im::{
    encode_group, encode_send, encode_sync, ImDecoded, OP_ACK_READ, OP_GROUP_ADD, OP_GROUP_CREATE,
    OP_GROUP_MEMBERS, OP_GROUP_REMOVE, OP_READ_LIST, OP_SEND, OP_SYNC, OP_WITHDRAW,
};
use crate::wire::ops::{decode_reply, encode_request, Reply, OP_HELLO, OP_OPEN, OP_PING, OP_SHAKE};

pub struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
    out: BytesMut,
    next_id: u64,
    buf: Vec<u8>,
    /// PUSH frames received while waiting for replies: (uid, max_seq), oldest first.
    pub pushes: Vec<(u64, u64)>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            decoder: FrameDecoder::new(),
            out: BytesMut::new(),
            next_id: 1,
            buf: vec![0; 64 << 10],
            pushes: Vec::new(),
        })
    }

    /// Queues a request; returns its request id. Nothing is sent before [`Client::flush`].
    pub fn send(&mut self, op: u8, payload: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        encode_request(op, id, payload, &mut self.out);
        id
    }

    /// A second handle on the connection's socket, for a thread that writes requests (encoded
    /// with [`encode_request`]) while this client reads their replies.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Queues raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// The next reply: its request id and content.
    pub fn recv(&mut self) -> io::Result<(u64, Reply)> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => {
                    let reply = decode_reply(f.op, &f.payload).ok_or_else(|| {
                        invalid(format!(
                            "reply op 0x{:02x} with {} bytes",
                            f.op,
                            f.payload.len()
                        ))
                    })?;
                    return Ok((f.request_id, reply));
                }
                Ok(None) => {}
                Err(e) => return Err(invalid(e.to_string())),
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.decoder.extend(&self.buf[..n]);
        }
    }

    /// The next reply that is not a PUSH (PUSH frames go to `pushes`).
    pub fn recv_reply(&mut self) -> io::Result<(u64, Reply)> {
        loop {
            match self.recv()? {
                (0, Reply::Im(ImDecoded::Push { uid, max_seq })) => {
                    self.pushes.push((uid, max_seq))
                }
                other => return Ok(other),
            }
        }
    }

    /// One request, one reply.
    pub fn call(&mut self, op: u8, payload: &[u8]) -> io::Result<Reply> {
        let id = self.send(op, payload);
        self.flush()?;
        let (got, reply) = self.recv_reply()?;
        if got != id {
            return Err(invalid(format!("reply for request {got}, expected {id}")));
        }
        Ok(reply)
    }

    /// Waits up to `timeout` for a PUSH (returns at once if one came already).
    pub fn wait_push(&mut self, timeout: Duration) -> io::Result<Option<(u64, u64)>> {
        if !self.pushes.is_empty() {
            return Ok(Some(self.pushes.remove(0)));
        }
        self.stream.set_read_timeout(Some(timeout))?;
        let got = match self.recv() {
            Ok((0, Reply::Im(ImDecoded::Push { uid, max_seq }))) => Ok(Some((uid, max_seq))),
            Ok((id, r)) => Err(invalid(format!("unexpected reply {r:?} to request {id}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        got
    }

    /// Sends a message (IM); `appinfo` must be unique per message (a retry reuses it).
    pub fn im_send(
        &mut self,
        appinfo: u128,
        to: Target,
        class: Class,
        body: &[u8],
    ) -> io::Result<Reply> {
        self.call(OP_SEND, &encode_send(appinfo, to, class, body))
    }

    /// The entries of the user's stream after seq `after` (IM). Starts the connection's PUSHes.
    pub fn im_sync(&mut self, after: u64, limit: u32) -> io::Result<Reply> {
        self.call(OP_SYNC, &encode_sync(after, limit))
    }

    /// A read receipt for the message at `seq` of the user's own stream (IM, R19).
    pub fn im_ack_read(&mut self, seq: u64) -> io::Result<Reply> {
        self.call(OP_ACK_READ, &seq.to_le_bytes())
    }

    /// Withdraws the user's own message at `seq` of its stream (IM, R20).
    pub fn im_withdraw(&mut self, seq: u64) -> io::Result<Reply> {
        self.call(OP_WITHDRAW, &seq.to_le_bytes())
    }

    /// Who read the user's own message at `seq` of its stream and who has not (IM, R19): the
    /// page from index `from` of the readers followed by the unread.
    pub fn im_read_list(&mut self, seq: u64, from: u64) -> io::Result<Reply> {
        let mut p = seq.to_le_bytes().to_vec();
        if from > 0 {
            p.extend_from_slice(&from.to_le_bytes());
        }
        self.call(OP_READ_LIST, &p)
    }

    pub fn group_create(&mut self, gid: u64, members: &[u64]) -> io::Result<Reply> {
        self.call(OP_GROUP_CREATE, &encode_group(gid, members))
    }

    pub fn group_add(&mut self, gid: u64, members: &[u64]) -> io::Result<Reply> {
        self.call(OP_GROUP_ADD, &encode_group(gid, members))
    }

    pub fn group_remove(&mut self, gid: u64, members: &[u64]) -> io::Result<Reply> {
        self.call(OP_GROUP_REMOVE, &encode_group(gid, members))
    }

    pub fn group_members(&mut self, gid: u64, from: u32) -> io::Result<Reply> {
        self.call(OP_GROUP_MEMBERS, &encode_group(gid, &[u64::from(from)]))
    }

    pub fn hello(&mut self, auth_token: &[u8]) -> io::Result<Reply> {
        self.call(OP_HELLO, auth_token)
    }

    pub fn shake(&mut self) -> io::Result<Reply> {
        self.call(OP_SHAKE, &[])
    }

    pub fn open(&mut self, token: &[u8]) -> io::Result<Reply> {
        self.call(OP_OPEN, token)
    }

    pub fn ping(&mut self, payload: &[u8]) -> io::Result<Reply> {
        self.call(OP_PING, payload)
    }
}
