//! The table of one core's open connections: how to cut each one (`shutdown(2)` through the
//! network path it lives on) and how to tell each one that the server is stopping. Runs on
//! the core's thread; the connection tasks and the core's shutdown sequence share it.
//!
//! Stopping is a signal, not a cut: a connection told to stop stops reading, waits for the
//! answers of what it already started (opens wait for their claims' commit), writes them,
//! and only then closes, gracefully (`conn`). Cutting its socket would lose those answers.

use std::cell::{Cell, RefCell};
use std::task::{Context, Poll, Waker};

use foldhash::{HashMap, HashMapExt};

/// How the core cuts a connection: by descriptor (glommio's sockets) or through the network
/// ring (its sockets are direct descriptors).
pub(crate) enum Cut {
    Fd(std::os::fd::RawFd),
    Ring(super::uring::Cutter),
}

impl Cut {
    /// `shutdown(2)` of one or both directions (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`).
    pub fn shutdown(&self, how: libc::c_int) {
        match self {
            // SAFETY: the connection's own descriptor, open while it is in the core's table.
            Cut::Fd(fd) => unsafe {
                libc::shutdown(*fd, how);
            },
            Cut::Ring(c) => c.shutdown(how),
        }
    }
}

struct Entry {
    cut: Cut,
    /// The connection's task, waiting to hear that the server stops (one waker per
    /// connection, replaced on every poll: the table never grows with polls).
    stop: Option<Waker>,
}

#[derive(Default)]
pub(crate) struct Conns {
    table: RefCell<HashMap<u64, Entry>>,
    next: Cell<u64>,
    stopping: Cell<bool>,
}

impl Conns {
    pub fn new() -> Conns {
        Conns {
            table: RefCell::new(HashMap::new()),
            next: Cell::new(0),
            stopping: Cell::new(false),
        }
    }

    pub fn add(&self, cut: Cut) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        self.table
            .borrow_mut()
            .insert(id, Entry { cut, stop: None });
        id
    }

    /// True when the connection was in the table.
    pub fn remove(&self, id: u64) -> bool {
        self.table.borrow_mut().remove(&id).is_some()
    }

    pub fn len(&self) -> usize {
        self.table.borrow().len()
    }

    /// The server is stopping (set once, at the start of the shutdown sequence).
    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Tells every connection to stop reading and finish what it started.
    pub fn stop_all(&self) {
        self.stopping.set(true);
        let wakers: Vec<Waker> = self
            .table
            .borrow_mut()
            .values_mut()
            .filter_map(|e| e.stop.take())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Ready once the server is stopping; until then the connection's task is woken by
    /// [`Conns::stop_all`].
    pub fn poll_stop(&self, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopping.get() {
            return Poll::Ready(());
        }
        if let Some(e) = self.table.borrow_mut().get_mut(&id) {
            match &e.stop {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => e.stop = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }

    /// `shutdown(2)` of one connection's socket.
    pub fn cut(&self, id: u64, how: libc::c_int) {
        if let Some(e) = self.table.borrow().get(&id) {
            e.cut.shutdown(how);
        }
    }

    /// `shutdown(2)` of every connection's socket (the drain time is over).
    pub fn cut_all(&self, how: libc::c_int) {
        for e in self.table.borrow().values() {
            e.cut.shutdown(how);
        }
    }
}
