//! Idle long connections for `hongbao load --idle N`: the connection-scale test. Before the
//! run, N connections are opened from several source addresses (a loopback target gets
//! 127.0.0.2, 127.0.0.3, ... by default, as many as the host's ephemeral port range needs:
//! each source address has that many ports per target), each authenticated with one HELLO as its own user when
//! auth keys are given; then they stay silent while the measured load runs on the other
//! connections, and at the end each is checked: still open, or closed by the server. Opened by
//! short-lived threads of the main thread; held by the main thread.
//!
//! Holding them takes no descriptors: once a connection is open and authenticated, its socket
//! moves into the table of registered files of a small io_uring (a *holder*) and its
//! descriptor is closed; the table keeps the socket (and the connection) alive, and the final
//! check peeks at it through the ring. So one process holds more idle connections than its
//! descriptor limit (each holder's table is capped by that limit, so there are as many
//! holders as needed). Where io_uring cannot do this, they are held as plain sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::token::{Auth, TokenKeys};

/// Connections per default source address: at most `PER_SOURCE_MAX`, and nine tenths of the
/// ephemeral ports a host gives each (source, target) pair (net.ipv4.ip_local_port_range:
/// 28,232 by default, 64,512 on a host tuned with tuning/net.sh).
pub fn per_source() -> usize {
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<usize>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            hi.checked_sub(lo).map(|d| d + 1)
        })
        .unwrap_or(28_232);
    (ports * 9 / 10).clamp(1, PER_SOURCE_MAX)
}

/// The kernel looks for a free ephemeral port at each connect by walking the ports already
/// used from that source address, so connecting slows with the connections per source:
/// 60,000 connections took 17.5 s of system time at 25,000 per source and 1.8 s at 2,000
/// (2026-12-01, this repository's machine). More sources cost nothing (127/8 is all local).
const PER_SOURCE_MAX: usize = 2_000;
/// Threads that open the idle connections.
const OPEN_THREADS: usize = 8;

/// What the summary says about the idle connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleSummary {
    /// Connections asked for (`--idle`).
    pub asked: usize,
    /// Still open at the end of the run.
    pub held: usize,
    /// Closed by the server or failed during the run.
    pub lost: usize,
    /// Seconds it took to open (and authenticate) them all.
    pub open_s: f64,
    /// Whether each sent a HELLO (with `--auth-keys`).
    pub authenticated: bool,
    /// Source addresses they were opened from (empty: the kernel's choice).
    pub sources: Vec<String>,
}

/// Registered-file slots per holder (the kernel caps a table at the descriptor limit).
const HOLDER_SLOTS_MAX: u32 = 16_384;

/// A small io_uring whose registered files are idle connections whose descriptors are closed.
struct Holder {
    ring: io_uring::IoUring,
    slots: u32,
    used: u32,
}

impl Holder {
    fn new() -> io::Result<Holder> {
        let limit = crate::fsutil::raise_nofile_limit().unwrap_or(1024);
        let slots = (limit.saturating_sub(64) as u32).clamp(1, HOLDER_SLOTS_MAX);
        let ring = io_uring::IoUring::new(64)?;
        ring.submitter().register_files_sparse(slots)?;
        Ok(Holder {
            ring,
            slots,
            used: 0,
        })
    }

    fn full(&self) -> bool {
        self.used == self.slots
    }

    /// Moves a connected socket into the table and closes its descriptor.
    fn take(&mut self, stream: TcpStream) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.ring
            .submitter()
            .register_files_update(self.used, &[stream.as_raw_fd()])?;
        self.used += 1;
        drop(stream);
        Ok(())
    }

    /// How many held connections are still open: a non-blocking peek at each answers would
    /// block (open, silent), some bytes (open, the server sent something unasked), or end of
    /// stream / an error (lost).
    fn open_count(&mut self) -> usize {
        use io_uring::{opcode, types};
        let mut byte = Box::new([0u8; 1]);
        let mut open = 0;
        let batch = self.ring.params().sq_entries();
        let mut next = 0;
        while next < self.used {
            let end = (next + batch).min(self.used);
            for i in next..end {
                let e = opcode::Recv::new(types::Fixed(i), byte.as_mut_ptr(), 1)
                    .flags(libc::MSG_PEEK | libc::MSG_DONTWAIT)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer outlives the batch (we wait for every completion below);
                // concurrent peeks write the same byte, which is never read.
                unsafe { self.ring.submission().push(&e) }.expect("batch fits the queue");
            }
            let n = (end - next) as usize;
            if self.ring.submit_and_wait(n).is_err() {
                return open;
            }
            let mut seen = 0;
            while seen < n {
                for cqe in self.ring.completion() {
                    seen += 1;
                    let r = cqe.result();
                    open += usize::from(r > 0 || r == -libc::EAGAIN);
                }
                if seen < n && self.ring.submit_and_wait(n - seen).is_err() {
                    return open;
                }
            }
            next = end;
        }
        open
    }
}

/// Whether idle connections can be held without descriptors here (io_uring with registered
/// files); otherwise each takes one.
pub fn held_without_descriptors() -> bool {
    Holder::new().is_ok()
}

/// The held connections.
pub struct IdleSet {
    holders: Vec<Holder>,
    /// Where no holder could be made.
    streams: Vec<TcpStream>,
    pub open_s: f64,
    pub authenticated: bool,
    pub sources: Vec<IpAddr>,
}

/// Source addresses for `n` connections to `target` when none are given: for a loopback IPv4
/// target, 127.0.0.2 and up, one per `per_source` connections (every 127/8 address is local
/// on Linux); otherwise none (the kernel picks, and ephemeral ports bound the count).
pub fn default_sources(target: SocketAddr, n: usize, per_source: usize) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && n > 0 => (0..n.div_ceil(per_source.max(1)))
            .map(|k| {
                let x = 2 + k;
                IpAddr::V4(Ipv4Addr::new(127, 0, (x >> 8) as u8, (x & 0xff) as u8))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Opens `n` connections: connection `i` from `sources[i % len]`, authenticated as uid
/// `uid_first + i` when `auth` is given. Any failure drops them all and names the connection.
pub fn open(
    target: SocketAddr,
    n: usize,
    sources: &[IpAddr],
    auth: Option<(&TokenKeys, u32)>,
    uid_first: u64,
) -> Result<IdleSet, String> {
    let start = Instant::now();
    let threads = OPEN_THREADS.min(n.max(1));
    type Held = (Vec<Holder>, Vec<TcpStream>);
    let results: Vec<Result<Held, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // Each thread signs with its own copy of the keys (they are not Sync).
                let auth = auth.map(|(keys, expires)| (keys.clone(), expires));
                s.spawn(move || {
                    let mut holders: Vec<Holder> = Vec::new();
                    let mut plain = Vec::new();
                    for i in (t..n).step_by(threads) {
                        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                        let hello = auth.as_ref().map(|(keys, expires_unix)| {
                            Auth {
                                uid: uid_first + i as u64,
                                expires_unix: *expires_unix,
                            }
                            .encode(keys)
                        });
                        let stream =
                            super::worker::connect(target, source, hello).map_err(|e| {
                                format!(
                                    "idle connection {} of {n}{}: {e}{}",
                                    i + 1,
                                    source.map_or(String::new(), |s| format!(" (from {s})")),
                                    hint(&e)
                                )
                            })?;
                        if holders.last().map_or(true, Holder::full) {
                            match Holder::new() {
                                Ok(h) => holders.push(h),
                                Err(_) => {
                                    plain.push(stream);
                                    continue;
                                }
                            }
                        }
                        let holder = holders.last_mut().expect("made above");
                        holder
                            .take(stream)
                            .map_err(|e| format!("holding idle connection {}: {e}", i + 1))?;
                    }
                    Ok((holders, plain))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("idle connect thread"))
            .collect()
    });
    let mut holders = Vec::new();
    let mut streams = Vec::new();
    for r in results {
        let (h, p) = r?;
        holders.extend(h);
        streams.extend(p);
    }
    Ok(IdleSet {
        holders,
        streams,
        open_s: start.elapsed().as_secs_f64(),
        authenticated: auth.is_some(),
        sources: sources.to_vec(),
    })
}

/// What to do about common connect failures at scale.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => {
            " (out of ephemeral ports: more source addresses with --sources, or a wider \
             net.ipv4.ip_local_port_range: tuning/net.sh)"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (out of descriptors: ulimit -n, fs.file-max: tuning/limits.sh, tuning/net.sh)"
        }
        Some(libc::ETIMEDOUT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN) => {
            " (the server's accept queue or connection limit: net.core.somaxconn, \
             server.connections_max)"
        }
        _ => "",
    }
}

impl IdleSet {
    pub fn len(&self) -> usize {
        self.streams.len() + self.holders.iter().map(|h| h.used as usize).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every connection without blocking: open (nothing to read, or data the server
    /// sent unasked) or lost (closed by the server, or failed).
    pub fn summary(&mut self, asked: usize) -> IdleSummary {
        let mut held: usize = self.holders.iter_mut().map(|h| h.open_count()).sum();
        let mut byte = [0u8; 1];
        for s in &self.streams {
            let open = s.set_nonblocking(true).is_ok()
                && match s.peek(&mut byte) {
                    Ok(n) => n > 0,
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                };
            held += usize::from(open);
        }
        IdleSummary {
            asked,
            held,
            lost: asked - held,
            open_s: self.open_s,
            authenticated: self.authenticated,
            sources: self.sources.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_get_one_source_per_50k() {
        let lo: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert!(default_sources(lo, 0, 50_000).is_empty());
        assert_eq!(
            default_sources(lo, 1, 50_000),
            vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        let four = default_sources(lo, 200_000, 50_000);
        assert_eq!(four.len(), 4);
        assert_eq!(four[3], "127.0.0.5".parse::<IpAddr>().unwrap());
        let many = default_sources(lo, 300 * 1000, 1000);
        assert_eq!(many[299], "127.0.1.45".parse::<IpAddr>().unwrap());
        let remote: SocketAddr = "10.0.0.1:7700".parse().unwrap();
        assert!(default_sources(remote, 200_000, 50_000).is_empty());
        assert!(per_source() >= 1);
    }

    #[test]
    fn idle_connections_are_held_and_losses_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let sources = default_sources(target, 10, 50_000);
        let mut set = open(target, 10, &sources, None, 1).unwrap();
        assert_eq!(set.len(), 10);
        if held_without_descriptors() {
            // Held in a ring's registered files, their descriptors closed.
            assert!(set.streams.is_empty());
            assert_eq!(set.holders.iter().map(|h| h.used).sum::<u32>(), 10);
        }
        let mut accepted: Vec<TcpStream> = (0..10).map(|_| listener.accept().unwrap().0).collect();
        for a in &accepted {
            assert_eq!(a.peer_addr().unwrap().ip(), sources[0]);
        }
        assert_eq!(set.summary(10).held, 10);
        // The server closes three.
        accepted.truncate(7);
        let mut s = set.summary(10);
        for _ in 0..100 {
            if s.lost == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            s = set.summary(10);
        }
        assert_eq!((s.held, s.lost), (7, 3));
    }
}
