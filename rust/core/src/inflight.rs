//! In-flight caps (`[[concurrency]]`): how many requests of a key are open at once.
//! A slot is taken when a request is allowed and given back when its lease ends
//! (`lease`): the response written, the client gone, the upstream failed. A table holds
//! only keys with a request open, so it is as large as the requests in flight.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::limits::RateLimitHeaders;
use crate::policy::ConcurrencyConfig;

/// The open requests of one cap, by key. Shared between engines whose cap definitions
/// are equal, so a reload keeps the slots of requests still in flight.
pub struct InFlightState {
    open: DashMap<String, u32, foldhash::fast::RandomState>,
    total: AtomicU64,
    max: u32,
    fingerprint: String,
}

impl InFlightState {
    pub fn new(config: &ConcurrencyConfig) -> Self {
        InFlightState {
            open: DashMap::default(),
            total: AtomicU64::new(0),
            max: config.max,
            fingerprint: config.fingerprint.clone(),
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Requests open under this cap, every key together.
    pub fn in_flight(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for `key`: `Ok(open now)`, or `Err(max)` when all are taken.
    pub fn acquire(&self, key: &str) -> Result<u32, u32> {
        let taken = match self.open.get_mut(key) {
            Some(n) if *n >= self.max => return Err(self.max),
            Some(mut n) => {
                *n += 1;
                *n
            }
            None => match self.open.entry(key.to_owned()) {
                Entry::Occupied(o) if *o.get() >= self.max => return Err(self.max),
                Entry::Occupied(mut o) => {
                    *o.get_mut() += 1;
                    *o.get()
                }
                Entry::Vacant(v) => {
                    v.insert(1);
                    1
                }
            },
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(taken)
    }

    /// Gives a slot of `key` back; the key goes when its last request does.
    pub fn release(&self, key: &str) {
        let mut held = false;
        self.open.remove_if_mut(key, |_, n| {
            held = true;
            *n -= 1;
            *n == 0
        });
        if held {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The RateLimit fields of a cap that is full: nothing left, retry in a second.
pub fn headers(name: &str, max: u32) -> RateLimitHeaders {
    RateLimitHeaders {
        ratelimit: format!("\"{name}\";r=0;t=1"),
        ratelimit_policy: format!("\"{name}\";q={max}"),
    }
}
