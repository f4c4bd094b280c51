//! The answers a core's connections wait for (opens waiting for their group commit, requests
//! forwarded to another core), on that core.
//!
//! A slab indexed by the low 32 bits of the request id (the high 32 are a generation, so a
//! late or duplicate answer for a reused slot is ignored). One entry per waiting request, no
//! allocation per request once the slab has grown to the core's peak in flight (this replaced
//! a oneshot channel and a hash-map entry per request). The connection's [`Answer`] future
//! polls its entry; dropping it unanswered abandons the entry, which the answer then frees.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Core;
use crate::wire::ops::OpResult;

enum State {
    Free,
    Waiting(Option<Waker>),
    Done(OpResult),
    /// The waiting side went away; the answer frees the entry.
    Abandoned,
}

struct Entry {
    gen: u32,
    state: State,
}

#[derive(Default)]
struct Slab {
    entries: Vec<Entry>,
    free: Vec<u32>,
}

/// The waiting answers of one core.
#[derive(Default)]
pub(crate) struct Answers {
    slab: RefCell<Slab>,
}

fn split(id: u64) -> (usize, u32) {
    ((id as u32) as usize, (id >> 32) as u32)
}

impl Answers {
    /// A new entry; its id goes with the request and comes back with the answer.
    pub fn register(&self) -> u64 {
        let mut slab = self.slab.borrow_mut();
        let index = match slab.free.pop() {
            Some(i) => i as usize,
            None => {
                slab.entries.push(Entry {
                    gen: 0,
                    state: State::Free,
                });
                slab.entries.len() - 1
            }
        };
        let e = &mut slab.entries[index];
        e.gen = e.gen.wrapping_add(1);
        e.state = State::Waiting(None);
        (u64::from(e.gen) << 32) | index as u64
    }

    /// The live entry of `id`, if its generation still matches.
    fn entry(slab: &mut Slab, id: u64) -> Option<&mut Entry> {
        let (index, gen) = split(id);
        slab.entries.get_mut(index).filter(|e| e.gen == gen)
    }

    fn release(slab: &mut Slab, index: usize) {
        slab.entries[index].state = State::Free;
        slab.free.push(index as u32);
    }

    /// Frees an entry whose request was answered at once (never delivered).
    pub fn cancel(&self, id: u64) {
        let mut slab = self.slab.borrow_mut();
        if Self::entry(&mut slab, id).is_some() {
            Self::release(&mut slab, split(id).0);
        }
    }

    /// Hands the answer to its waiter. Unknown or stale ids are ignored.
    pub fn deliver(&self, id: u64, result: OpResult) {
        let mut slab = self.slab.borrow_mut();
        let Some(e) = Self::entry(&mut slab, id) else {
            return;
        };
        match std::mem::replace(&mut e.state, State::Free) {
            State::Waiting(waker) => {
                e.state = State::Done(result);
                drop(slab);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            State::Abandoned => Self::release(&mut slab, split(id).0),
            other => e.state = other,
        }
    }

    fn poll(&self, id: u64, cx: &Context<'_>) -> Poll<OpResult> {
        if let Some(result) = self.try_take(id) {
            return Poll::Ready(result);
        }
        let mut slab = self.slab.borrow_mut();
        let e = Self::entry(&mut slab, id).expect("a waiting answer's entry is live");
        match &mut e.state {
            State::Waiting(waker) => match waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            },
            _ => unreachable!("an answer is polled until it is taken, once"),
        }
        Poll::Pending
    }

    /// The answer, if it is there (frees the entry).
    fn try_take(&self, id: u64) -> Option<OpResult> {
        let mut slab = self.slab.borrow_mut();
        let e = Self::entry(&mut slab, id)?;
        if !matches!(e.state, State::Done(_)) {
            return None;
        }
        let State::Done(result) = std::mem::replace(&mut e.state, State::Free) else {
            unreachable!("checked")
        };
        Self::release(&mut slab, split(id).0);
        Some(result)
    }

    fn abandon(&self, id: u64) {
        let mut slab = self.slab.borrow_mut();
        let Some(e) = Self::entry(&mut slab, id) else {
            return;
        };
        match e.state {
            State::Waiting(_) => e.state = State::Abandoned,
            State::Done(_) => Self::release(&mut slab, split(id).0),
            _ => {}
        }
    }

    /// Entries in use (waiting, answered but not yet taken, or abandoned).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        let slab = self.slab.borrow();
        slab.entries.len() - slab.free.len()
    }
}

/// A connection's wait for one answer.
pub(crate) struct Answer {
    core: Rc<Core>,
    id: u64,
    done: bool,
}

impl Answer {
    pub fn new(core: Rc<Core>, id: u64) -> Answer {
        Answer {
            core,
            id,
            done: false,
        }
    }
}

impl Answer {
    /// The answer if it has arrived, without waiting.
    pub fn try_take(&mut self) -> Option<OpResult> {
        if self.done {
            return None;
        }
        let result = self.core.answers.try_take(self.id);
        self.done = result.is_some();
        result
    }
}

impl Future for Answer {
    type Output = OpResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpResult> {
        let poll = self.core.answers.poll(self.id, cx);
        if poll.is_ready() {
            self.done = true;
        }
        poll
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.done {
            self.core.answers.abandon(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ops::ErrorCode;

    fn noop_cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn answers_reach_their_waiter_once_and_slots_are_reused() {
        let a = Answers::default();
        let x = a.register();
        let y = a.register();
        assert!(a.poll(x, &noop_cx()).is_pending());
        a.deliver(y, OpResult::error(ErrorCode::Busy));
        a.deliver(y, OpResult::error(ErrorCode::Malformed)); // a duplicate is ignored
        assert_eq!(
            a.poll(y, &noop_cx()),
            Poll::Ready(OpResult::error(ErrorCode::Busy))
        );
        // y's slot is reused with a new generation: an answer for the old id is ignored.
        let z = a.register();
        assert_eq!(z as u32, y as u32);
        a.deliver(y, OpResult::error(ErrorCode::Malformed));
        assert!(a.poll(z, &noop_cx()).is_pending());
        a.cancel(z);
        a.deliver(x, OpResult::error(ErrorCode::Busy));
        assert!(a.poll(x, &noop_cx()).is_ready());
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn abandoned_entries_are_freed_by_their_answer_or_at_once() {
        let a = Answers::default();
        let x = a.register();
        a.abandon(x);
        assert_eq!(a.in_use(), 1);
        a.deliver(x, OpResult::error(ErrorCode::Busy));
        assert_eq!(a.in_use(), 0);
        let y = a.register();
        a.deliver(y, OpResult::error(ErrorCode::Busy));
        a.abandon(y);
        assert_eq!(a.in_use(), 0);
    }
}
