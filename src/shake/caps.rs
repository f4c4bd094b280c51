//! Per-user shake limits (R9): at most `envelopes_per_user` envelopes per user per event and at
//! least `min_interval_ms` between a user's shakes. Sans-IO, on the caller's clock.
//!
//! Owned by the user's home core: every shake of a uid is decided on one core (the runtime
//! forwards shakes there), so the counts are exact, not per connection. The table is bounded
//! (`users_max`); when it is full, users it does not hold get no envelope (counted), because
//! forgetting a user's count would let them exceed the cap.

use foldhash::{HashMap, HashMapExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsConfig {
    /// Most envelopes one user may win in the event; 0 means no cap.
    pub envelopes_per_user: u32,
    /// Shortest time between two shakes of one user; 0 means no limit.
    pub min_interval_ms: u32,
    /// Most users tracked by one core.
    pub users_max: usize,
}

impl Default for CapsConfig {
    fn default() -> CapsConfig {
        CapsConfig {
            envelopes_per_user: 0,
            min_interval_ms: 0,
            users_max: 4_000_000,
        }
    }
}

/// Why a shake may not win, before any pacing is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shook again sooner than the minimum interval; `wait_ms` until allowed.
    TooSoon { wait_ms: u32 },
    /// Won `envelopes_per_user` envelopes already.
    Capped,
    /// The user table is full and does not hold this user.
    TableFull,
}

#[derive(Debug, Clone, Copy, Default)]
struct UserState {
    /// Time of the last accepted shake plus one (0: never).
    last_ms_plus_one: u64,
    envelopes: u32,
}

pub struct UserCaps {
    config: CapsConfig,
    users: HashMap<u64, UserState>,
}

impl UserCaps {
    pub fn new(config: CapsConfig) -> UserCaps {
        UserCaps {
            config,
            users: HashMap::new(),
        }
    }

    pub fn config(&self) -> CapsConfig {
        self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.envelopes_per_user > 0 || self.config.min_interval_ms > 0
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn entry(&mut self, uid: u64) -> Option<&mut UserState> {
        if !self.users.contains_key(&uid) && self.users.len() >= self.config.users_max {
            return None;
        }
        Some(self.users.entry(uid).or_default())
    }

    /// A shake arrives: refuses it when too soon or when the user is at the cap, else records
    /// its time (a refused too-soon shake does not move the window).
    pub fn shake(&mut self, uid: u64, now_ms: u64) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let min = self.config.min_interval_ms as u64;
        let cap = self.config.envelopes_per_user;
        let user = self.entry(uid).ok_or(Refusal::TableFull)?;
        if min > 0 && user.last_ms_plus_one > 0 {
            let last = user.last_ms_plus_one - 1;
            let next = last + min;
            if now_ms < next {
                return Err(Refusal::TooSoon {
                    wait_ms: (next - now_ms).min(u32::MAX as u64) as u32,
                });
            }
        }
        user.last_ms_plus_one = now_ms + 1;
        if cap > 0 && user.envelopes >= cap {
            return Err(Refusal::Capped);
        }
        Ok(())
    }

    /// The user won an envelope (after [`UserCaps::shake`] accepted the shake).
    pub fn won(&mut self, uid: u64) {
        if self.config.envelopes_per_user == 0 {
            return;
        }
        if let Some(user) = self.users.get_mut(&uid) {
            user.envelopes += 1;
            // Invariant: a user never exceeds the cap.
            assert!(
                user.envelopes <= self.config.envelopes_per_user,
                "user {uid} won more than the per-user cap"
            );
        }
    }

    /// Recovery: the user claimed `envelopes` envelopes before the restart.
    pub fn restore(&mut self, uid: u64, envelopes: u32) {
        if self.config.envelopes_per_user == 0 {
            return;
        }
        let cap = self.config.envelopes_per_user;
        if let Some(user) = self.entry(uid) {
            user.envelopes = user.envelopes.saturating_add(envelopes).min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_caps_keep_no_state() {
        let mut caps = UserCaps::new(CapsConfig::default());
        for uid in 0..1000 {
            assert_eq!(caps.shake(uid, 5), Ok(()));
            caps.won(uid);
        }
        assert_eq!(caps.users(), 0);
    }

    #[test]
    fn interval_and_cap() {
        let mut caps = UserCaps::new(CapsConfig {
            envelopes_per_user: 2,
            min_interval_ms: 100,
            users_max: 10,
        });
        assert_eq!(caps.shake(7, 1_000), Ok(()));
        caps.won(7);
        assert_eq!(caps.shake(7, 1_050), Err(Refusal::TooSoon { wait_ms: 50 }));
        // A refused shake does not move the window.
        assert_eq!(caps.shake(7, 1_100), Ok(()));
        caps.won(7);
        assert_eq!(caps.shake(7, 1_200), Err(Refusal::Capped));
        assert_eq!(caps.shake(8, 1_200), Ok(()));
    }

    #[test]
    fn full_table_refuses_new_users_only() {
        let mut caps = UserCaps::new(CapsConfig {
            envelopes_per_user: 1,
            min_interval_ms: 0,
            users_max: 2,
        });
        assert_eq!(caps.shake(1, 0), Ok(()));
        assert_eq!(caps.shake(2, 0), Ok(()));
        assert_eq!(caps.shake(3, 0), Err(Refusal::TableFull));
        assert_eq!(caps.shake(1, 10), Ok(()));
    }

    #[test]
    fn restore_counts_claims_before_restart() {
        let mut caps = UserCaps::new(CapsConfig {
            envelopes_per_user: 3,
            min_interval_ms: 0,
            users_max: 10,
        });
        caps.restore(9, 2);
        assert_eq!(caps.shake(9, 0), Ok(()));
        caps.won(9);
        assert_eq!(caps.shake(9, 1), Err(Refusal::Capped));
    }
}
