//! The IM side of a core at run time: routes IM requests to the home core of their user or
//! group, runs the core's [`ImCore`] against the core's log, carries out its effects (answers,
//! messages to other cores' engines, pushes), keeps the presence of users homed here (which
//! cores have a connection watching each user), and wakes the watching connections of this
//! core when their user's stream grows (R17).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use super::{Core, Msg, Slot};
use crate::im::engine::{home, Effects, ImCore, ImMsg, PageEntry, PagePlan};
use crate::im::record::GroupChange;
use crate::im::Page;
use crate::im::{ImError, ImReply, OwnOp, SendRequest};
use crate::serve::setup::now_us;
use crate::shake::engine::Route;
use crate::store::LogWriter;
use crate::wire::im::{fit_page, ImAnswer, MEMBERS_PAGE};
use crate::wire::ops::ErrorCode;
use crate::wire::ops::OpResult;

/// A group request, run on the group's home core.
#[derive(Debug, Clone)]
pub enum GroupOp {
    Create {
        owner: u64,
        members: Vec<u64>,
    },
    Change(GroupChange),
    /// Members from index `from`, for a member `actor`.
    Members {
        actor: u64,
        from: u32,
    },
}

/// A connection watching its user's stream: the newest seq announced to it and the newest it
/// has written out as a PUSH frame.
pub(crate) struct Watch {
    pub uid: u64,
    announced: Cell<u64>,
    sent: Cell<u64>,
    waker: Cell<Option<Waker>>,
}

impl Watch {
    /// Ready with the seq to push when the stream grew past what was pushed.
    pub fn poll_push(&self, cx: &mut Context<'_>) -> Poll<u64> {
        let a = self.announced.get();
        if a > self.sent.get() {
            return Poll::Ready(a);
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    pub fn pushed(&self, seq: u64) {
        self.sent.set(self.sent.get().max(seq));
    }

    fn announce(&self, seq: u64) {
        if seq > self.announced.get() {
            self.announced.set(seq);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

impl Core {
    fn home_of(&self, id: u64) -> u16 {
        home(id, self.shared.cores as u16)
    }

    /// Runs `f` on this core's IM engine and log, then carries out its effects, including
    /// the messages this core sends itself, until nothing is left.
    pub(crate) fn im_run(&self, f: impl FnOnce(&mut ImCore, &mut LogWriter, &mut Effects)) {
        let mut fx = Effects::default();
        {
            let mut engine = self.engine.borrow_mut();
            f(&mut self.im.borrow_mut(), engine.log_mut(), &mut fx);
        }
        self.im_effects(fx);
        // Messages to itself, handled in order; then the deliveries they queued are appended.
        loop {
            let next = self.im_local.borrow_mut().pop_front();
            let flushing = next.is_none();
            let mut fx = Effects::default();
            {
                let mut engine = self.engine.borrow_mut();
                let mut im = self.im.borrow_mut();
                match next {
                    Some(msg) => im.handle(msg, now_us(), engine.log_mut(), &mut fx),
                    None => im.flush(engine.log_mut()),
                }
            }
            let more = !fx.messages.is_empty();
            self.im_effects(fx);
            if flushing && !more && self.im_local.borrow().is_empty() {
                break;
            }
        }
        self.wake_commit();
        if !self.bulk_running.get() && self.im.borrow().huge_writable() {
            // Full means a wake-up is pending already.
            let _ = self.bulk_wake.try_send(());
        }
    }

    fn im_effects(&self, fx: Effects) {
        for us in fx.fanout_us {
            self.metrics().im_fanout(us);
        }
        for (route, reply) in fx.replies {
            self.deliver(route, OpResult::im(reply));
        }
        for (dst, msg) in fx.messages {
            if dst == self.id {
                self.im_local.borrow_mut().push_back(msg);
            } else {
                self.outbox.borrow_mut()[dst as usize].push_back(Msg::Im(msg));
            }
        }
        if fx.pushes.is_empty() {
            return;
        }
        let presence = self.presence.borrow();
        for (uid, seq) in fx.pushes {
            let Some(cores) = presence.get(&uid) else {
                continue;
            };
            self.metrics().im_pushes.fetch_add(1, Ordering::Relaxed);
            for &c in cores {
                if c == self.id {
                    self.announce(uid, seq);
                } else {
                    self.outbox.borrow_mut()[c as usize].push_back(Msg::Push { uid, seq });
                }
            }
        }
    }

    /// Wakes this core's connections watching `uid`.
    pub(crate) fn announce(&self, uid: u64, seq: u64) {
        if let Some(list) = self.watchers.borrow().get(&uid) {
            for w in list {
                w.announce(seq);
            }
        }
    }

    /// A connection of this core starts watching its user's stream.
    pub(crate) fn watch(&self, uid: u64) -> Rc<Watch> {
        let w = Rc::new(Watch {
            uid,
            announced: Cell::new(0),
            sent: Cell::new(0),
            waker: Cell::new(None),
        });
        let first = {
            let mut watchers = self.watchers.borrow_mut();
            let list = watchers.entry(uid).or_default();
            list.push(w.clone());
            list.len() == 1
        };
        if first {
            self.presence_changed(uid, true);
        }
        w
    }

    pub(crate) fn unwatch(&self, w: &Rc<Watch>) {
        let last = {
            let mut watchers = self.watchers.borrow_mut();
            let Some(list) = watchers.get_mut(&w.uid) else {
                return;
            };
            list.retain(|x| !Rc::ptr_eq(x, w));
            let empty = list.is_empty();
            if empty {
                watchers.remove(&w.uid);
            }
            empty
        };
        if last {
            self.presence_changed(w.uid, false);
        }
    }

    fn presence_changed(&self, uid: u64, online: bool) {
        let home = self.home_of(uid);
        if home == self.id {
            self.set_presence(uid, self.id, online);
        } else {
            self.outbox.borrow_mut()[home as usize].push_back(Msg::Presence {
                uid,
                core: self.id,
                online,
            });
        }
    }

    pub(crate) fn set_presence(&self, uid: u64, core: u16, online: bool) {
        let mut presence = self.presence.borrow_mut();
        let list = presence.entry(uid).or_default();
        list.retain(|&c| c != core);
        if online {
            list.push(core);
        } else if list.is_empty() {
            presence.remove(&uid);
        }
    }

    /// An answer entry for an IM request, and where the request runs: `Ok` here (with its
    /// route), `Err` on that core (the request goes through the queue with the id).
    fn im_route(self: &Rc<Self>, home: u16) -> (Slot, Result<Route, (u16, u64)>) {
        let id = self.answers.register();
        let slot = Slot::Wait(super::answers::Answer::new(self.clone(), id));
        if home == self.id {
            (slot, Ok(Route::Local(id)))
        } else {
            self.metrics().forwarded_out.fetch_add(1, Ordering::Relaxed);
            (slot, Err((home, id)))
        }
    }

    pub(crate) fn im_send(self: &Rc<Self>, req: SendRequest) -> Slot {
        let (slot, route) = self.im_route(self.home_of(req.sender));
        match route {
            Ok(route) => self.run_send(req, route),
            Err((home, id)) => {
                let from = self.id;
                self.outbox.borrow_mut()[home as usize].push_back(Msg::ImSend { req, from, id });
            }
        }
        slot
    }

    pub(crate) fn run_send(&self, req: SendRequest, route: Route) {
        let now = now_us();
        self.im_run(|im, log, fx| im.send(req, route, now, log, fx));
    }

    pub(crate) fn im_own(self: &Rc<Self>, uid: u64, seq: u64, op: OwnOp) -> Slot {
        let (slot, route) = self.im_route(self.home_of(uid));
        match route {
            Ok(route) => self.run_own(uid, seq, op, route),
            Err((home, id)) => {
                let from = self.id;
                self.outbox.borrow_mut()[home as usize].push_back(Msg::ImOwn {
                    uid,
                    seq,
                    op,
                    from,
                    id,
                });
            }
        }
        slot
    }

    pub(crate) fn run_own(&self, uid: u64, seq: u64, op: OwnOp, route: Route) {
        let now = now_us();
        match op {
            OwnOp::AckRead => self.im_run(|im, log, fx| im.ack_read(uid, seq, route, now, log, fx)),
            OwnOp::Withdraw => {
                self.im_run(|im, log, fx| im.withdraw(uid, seq, route, now, log, fx))
            }
            OwnOp::ReadList { from } => {
                self.im_run(|im, _, fx| im.read_list(uid, seq, from, route, fx))
            }
        }
    }

    pub(crate) fn im_sync(self: &Rc<Self>, uid: u64, after: u64, limit: u32) -> Slot {
        let home = self.home_of(uid);
        if home == self.id {
            let plan = self.im.borrow().sync_plan(uid, after, limit as usize);
            if !plan.has_cold() {
                return Slot::Ready(page_answer(hot_page(plan)));
            }
            let (slot, route) = self.im_route(home);
            self.read_cold(uid, plan, route.expect("homed here"));
            return slot;
        }
        let (slot, route) = self.im_route(home);
        if let Err((home, id)) = route {
            let from = self.id;
            self.outbox.borrow_mut()[home as usize].push_back(Msg::ImSync {
                uid,
                after,
                limit,
                from,
                id,
            });
        }
        slot
    }

    /// A page of a stream homed here for a request of `route`: answered now when it is all in
    /// memory, after reading its cold entries from the log otherwise.
    pub(crate) fn run_sync(self: &Rc<Self>, uid: u64, after: u64, limit: u32, route: Route) {
        let plan = self.im.borrow().sync_plan(uid, after, limit as usize);
        if plan.has_cold() {
            self.read_cold(uid, plan, route);
        } else {
            self.deliver(route, page_answer(hot_page(plan)));
        }
    }

    /// Reads a page's cold entries (R24) in a task of their own, then answers: the page, or
    /// `unreadable` (with a log line) when an entry cannot be read back.
    fn read_cold(self: &Rc<Self>, uid: u64, plan: PagePlan, route: Route) {
        let cold = plan
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, PageEntry::Cold(_)))
            .count() as u64;
        self.im.borrow().count_cold_reads(cold);
        let core = self.clone();
        glommio::spawn_local(async move {
            let result = match core.cold.resolve(uid, plan).await {
                Ok(page) => page_answer(page),
                Err(e) => {
                    core.im.borrow().count_cold_error();
                    eprintln!(
                        "core {}: a cold entry of user {uid}'s stream could not be read back: {e}",
                        core.id
                    );
                    OpResult::error(ErrorCode::Unreadable)
                }
            };
            core.deliver(route, result);
            core.flush();
        })
        .detach();
    }

    pub(crate) fn im_group(self: &Rc<Self>, gid: u64, op: GroupOp) -> Slot {
        let (slot, route) = self.im_route(self.home_of(gid));
        match route {
            Ok(route) => self.run_group(gid, op, route),
            Err((home, id)) => {
                let from = self.id;
                self.outbox.borrow_mut()[home as usize].push_back(Msg::ImGroup {
                    gid,
                    op,
                    from,
                    id,
                });
            }
        }
        slot
    }

    pub(crate) fn run_group(&self, gid: u64, op: GroupOp, route: Route) {
        match op {
            GroupOp::Create { owner, members } => {
                self.im_run(|im, log, fx| im.create_group(gid, owner, &members, route, log, fx))
            }
            GroupOp::Change(change) => {
                self.im_run(|im, log, fx| im.update_group(gid, change, route, log, fx))
            }
            GroupOp::Members { actor, from } => {
                let result = match self.im.borrow().group_members(gid) {
                    None => OpResult::im(ImReply::Error(ImError::NoSuchGroup)),
                    Some((_, all)) if all.binary_search(&actor).is_err() => {
                        OpResult::im(ImReply::Error(ImError::NotMember))
                    }
                    Some((version, all)) => {
                        let start = (from as usize).min(all.len());
                        let end = (start + MEMBERS_PAGE).min(all.len());
                        OpResult::Im(ImAnswer::Members {
                            gid,
                            version,
                            total: all.len() as u32,
                            members: all[start..end].to_vec(),
                        })
                    }
                };
                self.deliver(route, result);
            }
        }
    }

    /// A message of another core's IM engine.
    pub(crate) fn im_message(&self, msg: ImMsg) {
        let now = now_us();
        self.im_run(|im, log, fx| im.handle(msg, now, log, fx));
    }

    /// Periodic IM work (parked sends and held deliveries, forgetting old appinfos).
    pub(crate) fn im_tick(&self) {
        let now = now_us();
        {
            let im = self.im.borrow();
            let (s, m) = (im.stats, self.metrics());
            m.im_sends.store(s.sends, Ordering::Relaxed);
            m.im_cooled.store(s.cooled, Ordering::Relaxed);
            let (reads, errors) = im.cold_counts();
            m.im_cold_reads.store(reads, Ordering::Relaxed);
            m.im_cold_read_errors.store(errors, Ordering::Relaxed);
            m.im_duplicates.store(s.duplicates, Ordering::Relaxed);
            m.im_stream_appends
                .store(s.stream_appends, Ordering::Relaxed);
            m.im_delivery_records
                .store(s.delivery_records, Ordering::Relaxed);
            m.im_merged_messages
                .store(s.merged_messages, Ordering::Relaxed);
            m.im_held_deliveries
                .store(s.held_deliveries, Ordering::Relaxed);
            m.im_streams
                .store(im.stream_count() as u64, Ordering::Relaxed);
            m.im_parked.store(s.parked, Ordering::Relaxed);
            m.im_parked_now.store(im.parked() as u64, Ordering::Relaxed);
            m.im_appinfo_entries
                .store(im.appinfo_entries() as u64, Ordering::Relaxed);
            m.im_deliveries_held
                .store(im.deliveries_held() as u64, Ordering::Relaxed);
            m.im_huge_backlog
                .store(im.huge_backlog() as u64, Ordering::Relaxed);
            let (kept, slots) = im.kept();
            m.im_kept_messages.store(kept as u64, Ordering::Relaxed);
            m.im_kept_slots.store(slots as u64, Ordering::Relaxed);
            m.im_park_dropped.store(s.park_dropped, Ordering::Relaxed);
            m.im_work_refused.store(s.work_refused, Ordering::Relaxed);
            m.im_history_forgotten
                .store(s.history_forgotten, Ordering::Relaxed);
            m.im_group_snapshots.store(s.snapshots, Ordering::Relaxed);
            m.im_memory_refused
                .store(s.memory_refused, Ordering::Relaxed);
            m.disk_refused_im.store(s.disk_refused, Ordering::Relaxed);
        }
        // The heap is the whole process's: every core reads the same sum (64 loads).
        let heap = crate::heap::in_use();
        let full = heap > self.shared.im_memory_max;
        let was_full = self.im.borrow_mut().set_memory_full(full);
        if full != was_full && self.id == 0 {
            let mib = |b: u64| b >> 20;
            if full {
                eprintln!(
                    "IM: heap {} MiB is over im.memory_max_mb = {}: new messages and group \
                     changes are answered busy until memory is freed (retention, restart, \
                     more RAM)",
                    mib(heap),
                    mib(self.shared.im_memory_max)
                );
            } else {
                eprintln!("IM: heap {} MiB is under im.memory_max_mb again", mib(heap));
            }
        }
        // Also flushes deliveries a busy flush deferred (huge groups beyond the budget).
        self.im_run(|im, log, _| im.tick(now, log));
    }
}

/// Member appends of huge-group deliveries per slice of the bulk task: one burst of the
/// budget ([`crate::im::engine::HUGE_APPENDS_BURST`]), so a lone 10,000-member message is
/// still written whole and rides one commit (slices of 2,000 spread it over several commits:
/// its last PUSH came at p50 2.4-4.3 ms instead of about 2, docs/BENCHMARKS.md).
pub(crate) const BULK_SLICE: usize = crate::im::engine::HUGE_APPENDS_BURST as usize;
/// glommio shares of the bulk task's queue (the default queue, where connections and the
/// commit loop run, has 1,000): when both have work, huge groups get about a tenth of the core.
pub(crate) const BULK_SHARES: usize = 100;

/// Writes huge-group deliveries (R21, R22) whenever the engine has some the current batch's
/// budget allows, in slices of [`BULK_SLICE`] member appends; between slices it yields its
/// task queue, so connections and the commit loop run first. Chats' records are thus
/// appended and handed to the disk before the huge group's, not after them.
pub(crate) async fn bulk_loop(
    core: Rc<Core>,
    wake: glommio::channels::local_channel::LocalReceiver<()>,
) {
    while wake.recv().await.is_some() {
        loop {
            let mut wrote = false;
            core.bulk_running.set(true);
            core.im_run(|im, log, _| wrote = im.write_huge_slice(log, BULK_SLICE));
            core.bulk_running.set(false);
            if !wrote || !core.im.borrow().huge_writable() {
                break;
            }
            glommio::executor().yield_task_queue_now().await;
        }
    }
}

/// A page whose entries are all in memory.
fn hot_page(plan: PagePlan) -> Page {
    Page {
        entries: plan
            .entries
            .into_iter()
            .map(|(seq, e)| match e {
                PageEntry::Hot(m) => (seq, m),
                PageEntry::Cold(_) => unreachable!("a page with cold entries is read first"),
            })
            .collect(),
        max_seq: plan.max_seq,
    }
}

fn page_answer(mut page: Page) -> OpResult {
    fit_page(&mut page);
    OpResult::Im(ImAnswer::Page(Box::new(page)))
}
