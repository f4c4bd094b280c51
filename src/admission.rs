//! Admission and pacing of shakes on one core (R9, R10, R15), as a state machine on a clock
//! the caller passes in (milliseconds): which shakes get an envelope, which a sponsor page,
//! which nothing, and the back-off hint every reply carries.
//!
//! Two token buckets, in micro-envelopes so all arithmetic is integer:
//! - **pace**: refilled at `remaining tickets / remaining slot time` (times the operator's
//!   speed), so a slot's envelopes are spread over the slot, neither exhausted early nor left
//!   over; it may run ahead of the even schedule by at most `burst_ms` of that rate;
//! - **quota**: refilled at the operator's per-second quota (derived from the measured capacity
//!   of the open and credit path), holding at most `burst_ms` of it.
//!
//! A shake gets an envelope only when both buckets hold a whole one. Per-user caps (envelopes
//! per user, minimum interval) need per-user state and are the server's (issue 3).
//! Owned by the core that owns the slot's shard; no I/O, no clock, no allocation per call.

/// One envelope in bucket units.
const UNIT: u128 = 1_000_000;

/// Operator settings; every field can be changed at run time with [`Pacer::set_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingConfig {
    /// Most envelopes per second this core may issue; 0 means no quota.
    pub quota_per_second: u32,
    /// Issue faster (above 1000) or slower (below 1000) than even spreading, per mille. At
    /// 1000 a slot's envelopes are all issued by its end; below 1000 some are deliberately
    /// left over (reported unissued, available to a later plan); above 1000 issuing is
    /// front-loaded and still finishes by the slot's end.
    pub speed_permille: u32,
    /// How far issuing may run ahead of its rate, in milliseconds of that rate.
    pub burst_ms: u32,
    /// Chance that a shake without an envelope is shown a sponsor page, parts per million.
    pub sponsor_ppm: u32,
    /// Back-off hint in every reply in normal operation, and in degrade mode (R10).
    pub backoff_ms: u32,
    pub degrade_backoff_ms: u32,
}

impl Default for PacingConfig {
    fn default() -> PacingConfig {
        PacingConfig {
            quota_per_second: 0,
            speed_permille: 1000,
            burst_ms: 100,
            sponsor_ppm: 300_000,
            backoff_ms: 0,
            degrade_backoff_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Envelope,
    Sponsor,
    Nothing,
    /// Outside the slot's time window.
    SlotClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The client must wait at least this long before its next shake.
    pub backoff_ms: u32,
}

pub struct Pacer {
    config: PacingConfig,
    slot_start_ms: u64,
    slot_end_ms: u64,
    pace: u128,
    quota: u128,
    last_ms: u64,
}

impl Pacer {
    pub fn new(config: PacingConfig, slot_start_ms: u64, slot_end_ms: u64) -> Pacer {
        assert!(slot_start_ms < slot_end_ms, "empty slot");
        Pacer {
            config,
            slot_start_ms,
            slot_end_ms,
            pace: 0,
            quota: 0,
            last_ms: slot_start_ms,
        }
    }

    pub fn config(&self) -> PacingConfig {
        self.config
    }

    pub fn set_config(&mut self, config: PacingConfig) {
        self.config = config;
    }

    fn refill(&mut self, now_ms: u64, remaining: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as u128;
        self.last_ms = self.last_ms.max(now_ms);
        let left_ms = self.slot_end_ms.saturating_sub(now_ms).max(1) as u128;
        let speed = self.config.speed_permille as u128;
        let burst = self.config.burst_ms.max(1) as u128;
        // Rate in units per ms: remaining * UNIT * speed / 1000 / left_ms.
        let rate_num = remaining as u128 * UNIT * speed;
        let rate_den = 1000 * left_ms;
        let pace_cap = (rate_num * burst / rate_den).max(UNIT);
        self.pace = (self.pace + rate_num * elapsed / rate_den).min(pace_cap);
        if self.config.quota_per_second > 0 {
            let quota_rate = self.config.quota_per_second as u128 * UNIT; // per 1000 ms
            let quota_cap = (quota_rate * burst / 1000).max(UNIT);
            self.quota = (self.quota + quota_rate * elapsed / 1000).min(quota_cap);
        }
    }

    /// Decides one shake. `remaining` is how many tickets the slot's shard still holds;
    /// `degraded` says the core is overloaded (R10); `roll` is a uniform random u32 used for
    /// the sponsor odds.
    pub fn decide(&mut self, now_ms: u64, remaining: u64, degraded: bool, roll: u32) -> Decision {
        let backoff_ms = if degraded {
            self.config.degrade_backoff_ms
        } else {
            self.config.backoff_ms
        };
        if now_ms < self.slot_start_ms || now_ms >= self.slot_end_ms {
            return Decision {
                outcome: Outcome::SlotClosed,
                backoff_ms,
            };
        }
        self.refill(now_ms, remaining);
        let quota_ok = self.config.quota_per_second == 0 || self.quota >= UNIT;
        let outcome = if remaining > 0 && self.pace >= UNIT && quota_ok {
            self.pace -= UNIT;
            if self.config.quota_per_second > 0 {
                self.quota -= UNIT;
            }
            Outcome::Envelope
        } else if (roll as u64 * 1_000_000) >> 32 < self.config.sponsor_ppm as u64 {
            Outcome::Sponsor
        } else {
            Outcome::Nothing
        };
        Decision {
            outcome,
            backoff_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Shakes every `every_ms` through a whole slot; returns envelope times.
    fn run(config: PacingConfig, tickets: u64, slot_ms: u64, every_ms: u64) -> Vec<u64> {
        let mut pacer = Pacer::new(config, 1_000, 1_000 + slot_ms);
        let mut remaining = tickets;
        let mut issued = Vec::new();
        let mut now = 0;
        while now < 2_000 + slot_ms {
            let d = pacer.decide(now, remaining, false, (now as u32).wrapping_mul(2654435761));
            if d.outcome == Outcome::Envelope {
                remaining -= 1;
                issued.push(now);
            }
            now += every_ms;
        }
        issued
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With demand above the pace, a slot's envelopes are all issued, only inside the slot,
        /// evenly: at every moment the count stays within a burst (plus one) of the even schedule.
        #[test]
        fn spreads_a_slot_evenly_and_issues_everything(slot_s in 1u64..20, fill in 0.0f64..=1.0) {
            let slot_ms = slot_s * 1000;
            // Demand (one shake per ms) at least twice the pace.
            let tickets = 1 + (fill * (slot_ms / 2) as f64) as u64;
            let config = PacingConfig { burst_ms: 100, ..PacingConfig::default() };
            let issued = run(config, tickets, slot_ms, 1);
            prop_assert_eq!(issued.len() as u64, tickets, "nothing left over");
            prop_assert!(issued.iter().all(|&t| (1_000..1_000 + slot_ms).contains(&t)));
            let burst = (tickets * 100).div_ceil(slot_ms) + 2;
            for (k, &t) in issued.iter().enumerate() {
                let schedule = tickets * (t - 1_000) / slot_ms;
                prop_assert!((k as u64) <= schedule + burst,
                    "envelope {} at {} ms is ahead of the schedule {} by more than {}", k, t, schedule, burst);
            }
        }

        /// The quota holds in every one-second window (plus one burst).
        #[test]
        fn quota_caps_every_second(quota in 1u32..500) {
            let config = PacingConfig { quota_per_second: quota, burst_ms: 100, speed_permille: 1000, ..PacingConfig::default() };
            let issued = run(config, 1_000_000, 5_000, 1);
            let burst = (quota as u64 * 100).div_ceil(1000).max(1);
            for (i, &t) in issued.iter().enumerate() {
                let in_window = issued[i..].iter().take_while(|&&u| u < t + 1000).count() as u64;
                prop_assert!(in_window <= quota as u64 + burst, "{} in the second after {}", in_window, t);
            }
        }
    }

    #[test]
    fn speed_steers_and_degrade_raises_backoff() {
        let slow = run(
            PacingConfig {
                speed_permille: 500,
                ..PacingConfig::default()
            },
            1000,
            10_000,
            1,
        );
        // At half speed, by the middle of the slot only about 30% is issued (1 - sqrt(1/2)),
        // and some envelopes are deliberately left over at the end.
        let by_middle = slow.iter().filter(|&&t| t < 6_000).count();
        assert!((250..=340).contains(&by_middle), "{by_middle}");
        assert!((900..1000).contains(&slow.len()), "{}", slow.len());
        let fast = run(
            PacingConfig {
                speed_permille: 2000,
                ..PacingConfig::default()
            },
            1000,
            10_000,
            1,
        );
        // At double speed issuing is front-loaded (remaining falls like ((T - t) / T)^2, so 75%
        // is out by the middle) and everything is out before the slot ends.
        let by_middle = fast.iter().filter(|&&t| t < 6_000).count();
        assert!((700..=800).contains(&by_middle), "{by_middle}");
        assert_eq!(fast.len(), 1000);
        assert!(*fast.last().unwrap() < 11_000);
        let mut p = Pacer::new(PacingConfig::default(), 0, 1000);
        assert_eq!(p.decide(10, 5, true, 0).backoff_ms, 2_000);
        assert_eq!(p.decide(10, 5, false, 0).backoff_ms, 0);
        assert_eq!(p.decide(1000, 5, false, 0).outcome, Outcome::SlotClosed);
    }

    #[test]
    fn sponsor_odds_follow_the_setting() {
        let mut p = Pacer::new(
            PacingConfig {
                sponsor_ppm: 250_000,
                ..PacingConfig::default()
            },
            0,
            1_000_000,
        );
        let mut sponsors = 0;
        for i in 0..100_000u32 {
            // No tickets: every shake is a sponsor page or nothing.
            if p.decide(10, 0, false, i.wrapping_mul(2654435761)).outcome == Outcome::Sponsor {
                sponsors += 1;
            }
        }
        assert!((24_000..26_000).contains(&sponsors), "{sponsors}");
    }
}
