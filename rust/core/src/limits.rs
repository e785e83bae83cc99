//! Per-identity token buckets, one keyed table per `[[limit]]`: GCRA (the generic cell
//! rate algorithm) kept here rather than in `governor`, because budgets that settle
//! from usage must give cells back and charge more after the fact, which governor's
//! API has no way to do. One algorithm serves every limit, settled or not.
//!
//! A key's whole state is one number, its TAT ("theoretical arrival time"): the time
//! at which its bucket is full again. With `T` the time one cell takes to come back
//! and `tau = T × burst`, taking `n` cells at `now` moves the TAT to
//! `max(tat, now) + n·T`, allowed when that is at most `now + tau`; the cells left are
//! `(now + tau − tat) / T`. A refund moves the TAT back (never before `now`: a bucket
//! is never more than full), an excess moves it on (never past `now + tau`: a bucket is
//! never below empty, and the excess is never a 429 after the fact).
//!
//! Memory stays bounded: keys whose buckets are full again are swept, and a limit holds
//! at most `max_keys` live keys; a new key past that is refused (fail closed) rather
//! than letting a flood of identities grow the table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::EngineClock;
use crate::policy::LimitConfig;

/// How many checks pass between two sweeps of stale keys.
const SWEEP_EVERY: u64 = 4096;

const SECOND: u64 = 1_000_000_000;

/// Hashed with foldhash, as the token and certificate caches are, not the default
/// SipHash: its seed is random per table, and a table never holds more than the
/// limit's `max_keys` live keys, whatever a `key` expression makes of a request.
/// The value is the key's TAT in the clock's nanoseconds.
type Map = DashMap<String, u64, foldhash::fast::RandomState>;

/// The live buckets of one limit. Shared between engines whose limit definitions are
/// equal, so a config reload keeps them.
pub struct LimitState {
    table: Map,
    clock: EngineClock,
    /// Nanoseconds for one cell to come back.
    period: u64,
    /// `period × burst`: how far ahead of now a TAT may be.
    tau: u64,
    burst: u32,
    max_keys: usize,
    checks: AtomicU64,
    /// When a full table was last swept (clock nanoseconds + 1; 0: never).
    last_full_sweep: AtomicU64,
    fingerprint: String,
    policy_header: String,
}

/// `RateLimit-Policy` never changes for a limit, so it is formatted once.
fn policy_header(config: &LimitConfig) -> String {
    format!(
        "\"{}\";q={};w={}",
        config.name,
        config.burst,
        window_secs(config)
    )
}

/// The values of the IETF `RateLimit` and `RateLimit-Policy` header fields
/// (draft-ietf-httpapi-ratelimit-headers), ready to send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateLimitHeaders {
    pub ratelimit: String,
    pub ratelimit_policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed { remaining: u32, reset_secs: u64 },
    Limited { retry_after_secs: u64 },
    CostExceedsBurst { cost: u64, burst: u32 },
    TableFull { live_keys: usize },
}

impl LimitState {
    pub fn new(config: &LimitConfig, clock: EngineClock) -> Self {
        // Loading checked that period × burst is at most ten years of nanoseconds.
        let period = config.rate.period().as_nanos() as u64;
        LimitState {
            table: Map::default(),
            clock,
            period,
            tau: period * u64::from(config.burst),
            burst: config.burst,
            max_keys: config.max_keys,
            checks: AtomicU64::new(0),
            last_full_sweep: AtomicU64::new(0),
            fingerprint: config.fingerprint.clone(),
            policy_header: policy_header(config),
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Nanoseconds for one cell to come back.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// `period × burst`.
    pub fn tau(&self) -> u64 {
        self.tau
    }

    /// Live keys right now.
    pub fn live_keys(&self) -> usize {
        self.table.len()
    }

    /// Drops keys whose buckets are full again (indistinguishable from new ones) and
    /// gives the memory back.
    pub fn sweep(&self) {
        self.drop_full();
        self.table.shrink_to_fit();
    }

    fn drop_full(&self) {
        let now = self.clock.nanos();
        self.table.retain(|_, tat| *tat > now);
    }

    /// The cells `key` has left now, and the seconds until its bucket is full.
    pub fn remaining(&self, key: &str) -> (u32, u64) {
        let now = self.clock.nanos();
        let tat = self.table.get(key).map_or(now, |t| (*t).max(now));
        self.left(now, tat)
    }

    fn left(&self, now: u64, tat: u64) -> (u32, u64) {
        let ahead = tat - now;
        let remaining = (self.tau.saturating_sub(ahead) / self.period) as u32;
        (remaining, ceil_secs_nanos(ahead))
    }

    /// Runs `f` on `key`'s TAT (`None`: no live bucket, which is a full one) and stores
    /// what it returns; a new key is only created when `f` stores something.
    fn update<T>(&self, key: &str, f: impl FnOnce(Option<u64>) -> (T, Option<u64>)) -> T {
        if let Some(mut tat) = self.table.get_mut(key) {
            let (out, new) = f(Some(*tat));
            if let Some(n) = new {
                *tat = n;
            }
            return out;
        }
        match self.table.entry(key.to_owned()) {
            Entry::Occupied(mut o) => {
                let (out, new) = f(Some(*o.get()));
                if let Some(n) = new {
                    o.insert(n);
                }
                out
            }
            Entry::Vacant(v) => {
                let (out, new) = f(None);
                if let Some(n) = new {
                    v.insert(n);
                }
                out
            }
        }
    }

    /// Takes `cost` cells from `key`'s bucket.
    pub fn check(&self, key: &str, cost: u64) -> Outcome {
        if cost > u64::from(self.burst) {
            return Outcome::CostExceedsBurst {
                cost,
                burst: self.burst,
            };
        }
        if cost == 0 {
            // Nothing to take: the bucket is not touched and no key is created.
            return Outcome::Allowed {
                remaining: self.burst,
                reset_secs: 0,
            };
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Only drop stale keys here: shrinking the table every few thousand requests
            // would rehash it just to grow it again. `sweep` also gives the memory back.
            self.drop_full();
        }
        if self.table.len() >= self.max_keys && !self.table.contains_key(key) {
            self.sweep_when_full();
            let live = self.table.len();
            if live >= self.max_keys {
                return Outcome::TableFull { live_keys: live };
            }
        }
        let now = self.clock.nanos();
        let weight = cost * self.period;
        self.update(key, |tat| {
            let from = tat.unwrap_or(now).max(now);
            let new = from + weight;
            if new - now > self.tau {
                let wait = new - now - self.tau;
                let out = Outcome::Limited {
                    retry_after_secs: ceil_secs_nanos(wait).max(1),
                };
                return (out, None);
            }
            let (remaining, reset_secs) = self.left(now, new);
            (
                Outcome::Allowed {
                    remaining,
                    reset_secs,
                },
                Some(new),
            )
        })
    }

    /// Gives `cells` back to `key`'s bucket (a reservation not used, or a request a
    /// later step refused), never past full. Returns the cells given back.
    pub fn refund(&self, key: &str, cells: u64) -> u64 {
        if cells == 0 {
            return 0;
        }
        let now = self.clock.nanos();
        let Some(mut tat) = self.table.get_mut(key) else {
            return 0; // swept: the bucket is full already
        };
        let back = (*tat)
            .saturating_sub(now)
            .min(cells.saturating_mul(self.period));
        *tat -= back;
        back / self.period
    }

    /// Takes `cells` more from `key`'s bucket after the fact (usage beyond the
    /// reservation): never refused, never past empty. Returns the cells taken.
    pub fn charge(&self, key: &str, cells: u64) -> u64 {
        if cells == 0 {
            return 0;
        }
        let now = self.clock.nanos();
        self.update(key, |tat| {
            let from = tat.unwrap_or(now).max(now);
            let room = (now + self.tau).saturating_sub(from);
            let taken = (cells.saturating_mul(self.period)).min(room) / self.period;
            (taken, (taken > 0).then(|| from + taken * self.period))
        })
    }

    /// A full table is swept at most once a second, so a flood of new keys cannot make
    /// every request pay for a scan of the whole table.
    fn sweep_when_full(&self) {
        let now = self.clock.nanos();
        let last = self.last_full_sweep.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last - 1) >= SECOND)
            && self
                .last_full_sweep
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
        }
    }
}

fn ceil_secs_nanos(n: u64) -> u64 {
    n.div_ceil(SECOND)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Seconds for an empty bucket to fill again: the window of `RateLimit-Policy`.
pub fn window_secs(config: &LimitConfig) -> u64 {
    ceil_secs(config.rate.period() * config.burst).max(1)
}

impl LimitState {
    pub fn headers(
        &self,
        config: &LimitConfig,
        remaining: u32,
        reset_secs: u64,
    ) -> RateLimitHeaders {
        // `"name";r=…;t=…`, written without the formatting machinery: this runs on
        // every allowed request, and the formatter's code is pages of its own.
        let mut ratelimit = String::with_capacity(config.name.len() + 48);
        ratelimit.push('"');
        ratelimit.push_str(&config.name);
        ratelimit.push_str("\";r=");
        push_decimal(&mut ratelimit, u64::from(remaining));
        ratelimit.push_str(";t=");
        push_decimal(&mut ratelimit, reset_secs);
        RateLimitHeaders {
            ratelimit,
            ratelimit_policy: self.policy_header.clone(),
        }
    }
}

fn push_decimal(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimal_like_display() {
        for n in [
            0,
            7,
            9,
            10,
            99,
            100,
            4096,
            1_000_000_007,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut s = String::from("x=");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x={n}"));
        }
    }
}
