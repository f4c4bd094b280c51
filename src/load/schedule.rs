//! Open-loop scheduling for `hongbao load`: when each request is *meant* to be sent, whatever
//! the server does. Latency is measured from these intended times, so a server that stalls is
//! charged for every request that should have gone out during the stall (no coordinated
//! omission, as in wrk2). Pure arithmetic on nanoseconds since the run's start; the load
//! threads own one [`OpenLoop`] each.

/// Intended send times at `rate` requests per second, reached by a linear ramp from zero over
/// `ramp_ns` (no ramp when 0), shifted by `phase_ns` (so the threads of one run interleave).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    per_ns: f64,
    ramp_ns: f64,
    phase_ns: u64,
}

impl Schedule {
    pub fn new(rate_per_s: f64, ramp_ns: u64, phase_ns: u64) -> Schedule {
        assert!(rate_per_s > 0.0, "rate must be positive");
        Schedule {
            per_ns: rate_per_s / 1e9,
            ramp_ns: ramp_ns as f64,
            phase_ns,
        }
    }

    /// Intended time of request `k` (0-based). During the ramp the rate grows linearly, so
    /// `k` requests are due by `t = sqrt(2 k ramp / rate)`; after it, one every `1 / rate`.
    pub fn at(&self, k: u64) -> u64 {
        let k = k as f64;
        let in_ramp = self.per_ns * self.ramp_ns / 2.0;
        let t = if k < in_ramp {
            (2.0 * k * self.ramp_ns / self.per_ns).sqrt()
        } else {
            self.ramp_ns + (k - in_ramp) / self.per_ns
        };
        self.phase_ns + t as u64
    }
}

/// The requests of a schedule that are due, in order. A due request that cannot be sent yet
/// (every connection has its maximum in flight) stays due with its original intended time:
/// the wait is part of its latency.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    schedule: Schedule,
    next: u64,
    next_at: u64,
}

impl OpenLoop {
    pub fn new(schedule: Schedule) -> OpenLoop {
        OpenLoop {
            schedule,
            next: 0,
            next_at: schedule.at(0),
        }
    }

    /// The intended time of the next request if it is due at `now`.
    pub fn due(&self, now: u64) -> Option<u64> {
        (self.next_at <= now).then_some(self.next_at)
    }

    /// Marks the request returned by [`OpenLoop::due`] as sent (or dropped).
    pub fn take(&mut self) {
        self.next += 1;
        self.next_at = self.schedule.at(self.next);
    }

    /// When the next request is due.
    pub fn next_at(&self) -> u64 {
        self.next_at
    }

    /// Requests taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{Op, Recorder};

    const MS: u64 = 1_000_000;

    #[test]
    fn fixed_rate_without_ramp() {
        let s = Schedule::new(1000.0, 0, 0);
        assert_eq!(s.at(0), 0);
        assert_eq!(s.at(1), MS);
        assert_eq!(s.at(2500), 2500 * MS);
        let phased = Schedule::new(1000.0, 0, 250_000);
        assert_eq!(phased.at(3), 3 * MS + 250_000);
    }

    #[test]
    fn ramp_reaches_the_rate_linearly() {
        // 1,000/s reached over 2 s: 1,000 requests due in the ramp, then one per ms.
        let s = Schedule::new(1000.0, 2_000 * MS, 0);
        let within = |a: u64, b: u64| a.abs_diff(b) <= 1_000;
        assert!(within(s.at(1000), 2_000 * MS), "{}", s.at(1000));
        assert!(within(s.at(1001), 2_001 * MS));
        // A quarter of the ramp's requests are due at half its time (n ~ t^2).
        assert!(within(s.at(250), 1_000 * MS), "{}", s.at(250));
        // Gaps shrink during the ramp and are 1 ms after it.
        let gap = |k: u64| s.at(k + 1) - s.at(k);
        assert!(gap(10) > gap(100) && gap(100) > gap(900));
        assert!(within(gap(5000), MS));
    }

    #[test]
    fn late_requests_keep_their_intended_times() {
        // One request per ms. The sender runs at 0 ms, then not again until 100 ms (a stall):
        // the 100 requests due meanwhile are all sent at 100 ms, with their own intended times.
        let mut open = OpenLoop::new(Schedule::new(1000.0, 0, 0));
        let mut sent = Vec::new();
        for now in [0, 100 * MS] {
            while let Some(intended) = open.due(now) {
                sent.push((intended, now));
                open.take();
            }
        }
        assert_eq!(sent.len(), 101);
        assert_eq!(open.next_at(), 101 * MS);
        assert!(sent
            .iter()
            .enumerate()
            .all(|(k, &(intended, _))| intended == k as u64 * MS));

        // Every reply comes 1 ms after it was sent. Uncorrected, the run looks perfect (all
        // 1 ms); from intended times, the stall shows: the request due at 1 ms waited 100 ms.
        let mut rec = Recorder::default();
        for &(intended, at) in &sent {
            let reply = at + MS;
            rec.record(Op::Shake, "nothing", reply - intended, reply - at);
        }
        let corrected = rec.op_total(Op::Shake, true).unwrap();
        let uncorrected = rec.op_total(Op::Shake, false).unwrap();
        assert!(uncorrected.equivalent(uncorrected.max(), uncorrected.min()));
        assert!(uncorrected.equivalent(uncorrected.max(), MS));
        assert!(corrected.equivalent(corrected.max(), 100 * MS));
        // Latencies 1, 1, 2, ..., 100 ms: the median (51st of 101) is 50 ms.
        assert!(corrected.equivalent(corrected.value_at_quantile(0.5), 50 * MS));
    }

    #[test]
    fn a_request_that_cannot_go_stays_due() {
        let mut open = OpenLoop::new(Schedule::new(1000.0, 0, 0));
        assert_eq!(open.due(5 * MS), Some(0));
        // Not taken (no connection could send it): still due, same intended time.
        assert_eq!(open.due(6 * MS), Some(0));
        open.take();
        assert_eq!(open.due(6 * MS), Some(MS));
        assert_eq!(open.taken(), 1);
        assert_eq!(OpenLoop::new(Schedule::new(1.0, 0, 0)).due(0), Some(0));
        let mut slow = OpenLoop::new(Schedule::new(1.0, 0, 0));
        slow.take();
        assert_eq!(slow.due(999 * MS), None);
    }
}
