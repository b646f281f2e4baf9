//! The gateway's rate limits: sign-in guessing ([`SignInLimiter`]) and anonymous client
//! registration ([`AddressWindows`]). Both count client addresses by [`address_key`].
//!
//! Sign-in guessing limits:
//!
//! Three counters per attempt, each a sliding window of failures:
//! - the account from this address: a hard limit (429), so one address cannot keep guessing one
//!   password, but the account's owner, from their own address, is never locked out by it;
//! - the address: a hard limit over all accounts (spraying one password over many accounts);
//! - the account from anywhere: no lock (that would let anyone lock the owner out), but a delay
//!   that doubles with each failure, so guessing from many addresses gets slow.
//!
//! An attempt is reserved before the password is checked and counts against the limits while it
//! runs, so parallel guesses cannot all pass the check before the first failure is recorded.
//! Keys are hashed (an attacker-chosen 5 MB email costs 8 bytes), nothing is inserted by a
//! refused lookup, expired entries are swept, and the table is capped: when full, the entries
//! touched longest ago go first.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits of the sign-in form.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failures of one account from one address before it answers 429.
    pub per_account_and_address: usize,
    /// Failures from one address (all accounts) before it answers 429.
    pub per_address: usize,
    /// Failures of one account (any address) before attempts are delayed.
    pub account_delay_after: usize,
    /// The first delay; it doubles with each further failure, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// How long a failure counts.
    pub window: Duration,
    /// Most keys kept.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_account_and_address: 5,
            per_address: 20,
            account_delay_after: 5,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            window: Duration::from_secs(300),
            max_keys: 100_000,
        }
    }
}

#[derive(Default)]
struct Entry {
    failures: Vec<Instant>,
    in_flight: usize,
    touched: Option<Instant>,
}

impl Entry {
    fn expire(&mut self, now: Instant, window: Duration) {
        self.failures.retain(|t| now.duration_since(*t) < window);
    }

    fn idle(&self) -> bool {
        self.failures.is_empty() && self.in_flight == 0
    }
}

struct State {
    entries: HashMap<u64, Entry>,
    last_sweep: Instant,
}

/// The sign-in limiter. Cheap to clone.
#[derive(Clone)]
pub struct SignInLimiter {
    state: Arc<Mutex<State>>,
    hasher: RandomState,
    limits: Limits,
}

impl Default for SignInLimiter {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// Why an attempt may not run now.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// When to try again.
    pub retry_after: Duration,
}

/// A reserved attempt: report its outcome with [`Attempt::failed`] or [`Attempt::succeeded`];
/// dropped unreported (the request was abandoned mid-check), it counts as a failure.
pub struct Attempt {
    limiter: SignInLimiter,
    keys: [u64; 3],
    /// How long to wait before checking the password (the account's progressive delay).
    pub delay: Duration,
    done: bool,
}

impl SignInLimiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            })),
            hasher: RandomState::new(),
            limits,
        }
    }

    fn key(&self, kind: &str, parts: &[&str]) -> u64 {
        self.hasher.hash_one((kind, parts))
    }

    /// Reserves an attempt to sign in to `account` from `address`.
    pub fn reserve(&self, account: &str, address: IpAddr) -> Result<Attempt, Refused> {
        let account = account.to_ascii_lowercase();
        let address = &address_key(address).to_string();
        let keys = [
            self.key("account+address", &[&account, address]),
            self.key("address", &[address]),
            self.key("account", &[&account]),
        ];
        let limits = self.limits;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now);
        let mut retry_after = Duration::ZERO;
        for (key, max) in [
            (keys[0], limits.per_account_and_address),
            (keys[1], limits.per_address),
        ] {
            if let Some(entry) = state.entries.get_mut(&key) {
                entry.expire(now, limits.window);
                if entry.failures.len() + entry.in_flight >= max {
                    let oldest = entry.failures.first().copied().unwrap_or(now);
                    let wait = limits.window.saturating_sub(now.duration_since(oldest));
                    retry_after = retry_after.max(wait.max(Duration::from_secs(1)));
                }
            }
        }
        if !retry_after.is_zero() {
            return Err(Refused { retry_after });
        }
        let account_failures = state.entries.get_mut(&keys[2]).map_or(0, |entry| {
            entry.expire(now, limits.window);
            entry.failures.len() + entry.in_flight
        });
        let delay = match account_failures.checked_sub(limits.account_delay_after) {
            Some(extra) => limits
                .first_delay
                .saturating_mul(1u32 << extra.min(16))
                .min(limits.max_delay),
            None => Duration::ZERO,
        };
        for key in keys {
            let entry = state.entries.entry(key).or_default();
            entry.in_flight += 1;
            entry.touched = Some(now);
        }
        Self::cap(&mut state, limits.max_keys);
        Ok(Attempt {
            limiter: self.clone(),
            keys,
            delay,
            done: false,
        })
    }

    fn finish(&self, keys: &[u64; 3], failed: bool) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, key) in keys.iter().enumerate() {
            let Some(entry) = state.entries.get_mut(key) else {
                continue;
            };
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.touched = Some(now);
            if failed {
                entry.failures.push(now);
            } else if i != 1 {
                // A success clears the account's counters, not the address's.
                entry.failures.clear();
            }
            if entry.idle() {
                state.entries.remove(key);
            }
        }
        Self::cap(&mut state, self.limits.max_keys);
    }

    /// Drops what expired, at most once per window.
    fn sweep(&self, state: &mut State, now: Instant) {
        if now.duration_since(state.last_sweep) < self.limits.window {
            return;
        }
        state.last_sweep = now;
        let window = self.limits.window;
        state.entries.retain(|_, entry| {
            entry.expire(now, window);
            !entry.idle()
        });
    }

    /// Over the cap, the entries touched longest ago go (an attempt in flight is kept).
    fn cap(state: &mut State, max_keys: usize) {
        if state.entries.len() <= max_keys {
            return;
        }
        let mut by_age: Vec<(Option<Instant>, u64)> = state
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .map(|(k, e)| (e.touched, *k))
            .collect();
        by_age.sort_unstable();
        // A tenth at a time, so a full table is not sorted on every insert.
        let excess = state.entries.len() - max_keys + max_keys / 10;
        for (_, key) in by_age.into_iter().take(excess) {
            state.entries.remove(&key);
        }
    }

    /// Keys held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// Whether no key is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("delay", &self.delay)
            .finish()
    }
}

impl Attempt {
    /// The password was wrong.
    pub fn failed(mut self) {
        self.done = true;
        self.limiter.finish(&self.keys, true);
    }

    /// The password was right: the account's failures are forgotten.
    pub fn succeeded(mut self) {
        self.done = true;
        self.limiter.finish(&self.keys, false);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.finish(&self.keys, true);
        }
    }
}

/// Most client addresses tracked at once; beyond, the oldest window is dropped.
const MAX_ADDRESSES: usize = 10_000;

/// Events (client registrations) per client address in fixed windows. Keys are addresses
/// (fixed size, IPv6 by /64), the map is bounded, so an attacker can't grow it without bound.
#[derive(Default)]
pub struct AddressWindows {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AddressWindows {
    /// Counts an event from `ip`; `Err(retry_after)` when the address already had `per_window`
    /// in the current `window`.
    pub fn admit(&self, ip: IpAddr, per_window: u32, window: Duration) -> Result<(), Duration> {
        let key = address_key(ip);
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_ADDRESSES && !windows.contains_key(&key) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
            if windows.len() >= MAX_ADDRESSES
                && let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| *k)
            {
                windows.remove(&oldest);
            }
        }
        let (start, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            (*start, *count) = (now, 0);
        }
        if *count >= per_window {
            return Err(window.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

/// The rate-limit key of an address: IPv6 addresses by their /64 (one host usually holds a
/// whole /64, so counting single addresses would give it 2^64 budgets), IPv4 (also
/// IPv4-mapped) as they are. Every per-address limit keys by this.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn guesses_from_one_ipv6_slash_64_share_the_address_limit() {
        // The attack: one host owns a whole /64 and signs in from a fresh address for every
        // guess, spraying one password over many accounts.
        let limiter = limiter();
        for n in 0..20 {
            limiter
                .reserve(
                    &format!("user{n}@example.com"),
                    ip(&format!("2001:db8:1:2::{n:x}")),
                )
                .unwrap()
                .failed();
        }
        assert!(
            limiter
                .reserve("user99@example.com", ip("2001:db8:1:2:ffff::9"))
                .is_err(),
            "the 21st guess from the same /64 is refused"
        );
        assert!(
            limiter
                .reserve("user99@example.com", ip("2001:db8:1:3::1"))
                .is_ok(),
            "another /64 is another address"
        );
    }

    #[test]
    fn each_address_gets_its_registrations_per_window_and_ipv6_counts_per_64() {
        let windows = AddressWindows::default();
        let window = Duration::from_secs(60);
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            assert!(windows.admit(a, 3, window).is_ok());
        }
        let retry = windows.admit(a, 3, window).unwrap_err();
        assert!(retry > Duration::from_secs(50) && retry <= Duration::from_secs(60));
        assert!(windows.admit(ip("203.0.113.8"), 3, window).is_ok());
        for n in 1..=3 {
            assert!(
                windows
                    .admit(ip(&format!("2001:db8:1:2::{n}")), 3, window)
                    .is_ok()
            );
        }
        assert!(
            windows
                .admit(ip("2001:db8:1:2:ffff::9"), 3, window)
                .is_err(),
            "same /64"
        );
        assert!(windows.admit(ip("2001:db8:1:3::1"), 3, window).is_ok());
        assert!(
            windows.admit(ip("::ffff:203.0.113.7"), 3, window).is_err(),
            "IPv4-mapped"
        );
    }

    #[test]
    fn the_address_table_stays_bounded() {
        let windows = AddressWindows::default();
        for n in 0..(MAX_ADDRESSES as u32 + 500) {
            let _ = windows.admit(IpAddr::V4(n.into()), 20, Duration::from_secs(60));
        }
        assert!(windows.windows.lock().unwrap().len() <= MAX_ADDRESSES);
    }

    fn limiter() -> SignInLimiter {
        SignInLimiter::new(Limits {
            max_keys: 50,
            ..Limits::default()
        })
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let limiter = limiter();
        let held: Vec<_> = (0..5)
            .map(|_| limiter.reserve("ada@example.com", ip("10.0.0.1")).unwrap())
            .collect();
        assert!(
            limiter.reserve("ada@example.com", ip("10.0.0.1")).is_err(),
            "a sixth parallel guess must wait for the first five"
        );
        for attempt in held {
            attempt.failed();
        }
        let refused = limiter
            .reserve("ADA@example.com", ip("10.0.0.1"))
            .unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(200));
    }

    #[test]
    fn the_owner_is_not_locked_out_by_guesses_from_elsewhere() {
        let limiter = limiter();
        for _ in 0..5 {
            limiter
                .reserve("ada@example.com", ip("10.0.0.66"))
                .unwrap()
                .failed();
        }
        assert!(limiter.reserve("ada@example.com", ip("10.0.0.66")).is_err());
        let own = limiter.reserve("ada@example.com", ip("192.0.2.1")).unwrap();
        assert_eq!(own.delay, Duration::from_millis(250), "slowed, not locked");
        own.succeeded();
        let after = limiter.reserve("ada@example.com", ip("192.0.2.1")).unwrap();
        assert_eq!(
            after.delay,
            Duration::ZERO,
            "a success forgets the failures"
        );
    }

    #[test]
    fn delays_double_and_are_capped() {
        let limiter = limiter();
        let mut delays = Vec::new();
        for i in 0..12 {
            let attempt = limiter
                .reserve("ada@example.com", ip(&format!("10.0.1.{i}")))
                .unwrap();
            delays.push(attempt.delay.as_millis());
            attempt.failed();
        }
        assert_eq!(
            delays,
            [0, 0, 0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 8000]
        );
    }

    #[test]
    fn an_abandoned_attempt_counts_as_a_failure() {
        let limiter = limiter();
        for _ in 0..5 {
            drop(limiter.reserve("ada@example.com", ip("10.0.0.1")).unwrap());
        }
        assert!(limiter.reserve("ada@example.com", ip("10.0.0.1")).is_err());
    }

    #[test]
    fn keys_are_capped_and_lookups_store_nothing() {
        let limiter = limiter();
        let huge = "x".repeat(5 << 20);
        limiter.reserve(&huge, ip("10.0.0.1")).unwrap().succeeded();
        assert!(
            limiter.is_empty(),
            "a success with no failures keeps nothing"
        );
        for i in 0..200 {
            limiter
                .reserve(
                    &format!("{i}{huge}"),
                    ip(&format!("10.0.{}.{}", i / 250, i % 250)),
                )
                .unwrap()
                .failed();
        }
        assert!(limiter.len() <= 50, "{} keys kept", limiter.len());
    }
}
