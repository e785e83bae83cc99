//! Leases: what an allowed request holds until its response ends — the cells its
//! settled limits reserved and the slots of its in-flight caps — and how they settle.
//!
//! | how the response ended (`Ending`)                  | settled limits               | slots    |
//! | -------------------------------------------------- | ---------------------------- | -------- |
//! | `Usage`: the response reported `usage`             | charge exactly the usage     | released |
//! | `Refund`: the upstream refused before generating   | the whole reservation back   | released |
//! | `Keep`: anything else (client gone, cut stream, …) | the reservation stays spent  | released |
//!
//! Settling to usage gives back what was reserved and not used, or charges the excess
//! beyond the reservation — never past an empty bucket, never a 429 after the fact
//! (what could not be charged is reported as `unbilled`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::shared::{ScriptCall, SharedHeld};
use super::Engine;
use crate::inflight::InFlightState;
use crate::limits::LimitState;
use crate::policy::Settle;

/// What an allowed request holds.
#[derive(Default)]
pub(super) struct Lease {
    pub(super) reservations: Vec<Reservation>,
    pub(super) slots: Vec<(Arc<InFlightState>, String)>,
    /// Reservations and slots of cluster-scoped limits and caps, in the store.
    pub(super) shared: Vec<SharedHeld>,
    /// The id the store knows the lease's slots by.
    pub(super) shared_id: String,
}

impl Lease {
    pub(super) fn is_empty(&self) -> bool {
        self.reservations.is_empty() && self.slots.is_empty() && self.shared.is_empty()
    }

    /// (limit index, tokens) of every reservation, local then shared.
    pub(super) fn reserved(&self) -> Vec<(usize, u64)> {
        let local = self.reservations.iter().map(|r| (r.limit, r.reserved));
        let shared = self.shared.iter().filter_map(|h| match h {
            SharedHeld::Reservation {
                limit, reserved, ..
            } => Some((*limit, *reserved)),
            SharedHeld::Slot { .. } => None,
        });
        local.chain(shared).collect()
    }

    /// Gives the in-flight slots back (however the lease ends).
    fn release_slots(&self) {
        for (cap, key) in &self.slots {
            cap.release(key);
        }
    }
}

pub(super) struct Reservation {
    /// The limit's index in the deciding engine's policy.
    pub(super) limit: usize,
    pub(super) state: Arc<LimitState>,
    pub(super) key: String,
    pub(super) reserved: u64,
    pub(super) settle: Settle,
}

/// The open leases of one engine, by number.
#[derive(Default)]
pub(super) struct Leases {
    open: DashMap<u64, Lease, foldhash::fast::RandomState>,
    next: AtomicU64,
}

impl Leases {
    pub(super) fn open(&self, lease: Lease) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.insert(id, lease);
        id
    }

    pub(super) fn len(&self) -> usize {
        self.open.len()
    }
}

/// The OpenAI `usage` object of a response (the counts it gave).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
}

impl Usage {
    /// The count a limit settles on; `total_tokens` may be the sum of the other two.
    fn count(&self, settle: Settle) -> Option<u64> {
        match settle {
            Settle::PromptTokens => self.prompt_tokens,
            Settle::CompletionTokens => self.completion_tokens,
            Settle::TotalTokens => self.total_tokens.or_else(|| {
                self.prompt_tokens
                    .zip(self.completion_tokens)
                    .map(|(p, c)| p.saturating_add(c))
            }),
        }
    }
}

/// How a response ended, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The response carried `usage`.
    Usage(Usage),
    /// The upstream refused the request before generating (an error status without
    /// usage, or no connection): the whole reservation comes back.
    Refund,
    /// No usage for any other reason: the reservation stays spent.
    Keep,
}

/// Which rule settled a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleRule {
    Usage,
    Refunded,
    Kept,
    /// The response had `usage` but not the count this limit settles on.
    KeptUsageIncomplete,
    /// A cluster-scoped limit whose store did not answer when the response ended: the
    /// reservation stays spent.
    KeptStoreUnavailable,
}

impl SettleRule {
    pub fn as_str(self) -> &'static str {
        match self {
            SettleRule::Usage => "usage",
            SettleRule::Refunded => "refunded",
            SettleRule::Kept => "kept",
            SettleRule::KeptUsageIncomplete => "kept_usage_incomplete",
            SettleRule::KeptStoreUnavailable => "kept_store_unavailable",
        }
    }
}

/// One settled limit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Settled<'e> {
    pub limit: &'e str,
    pub rule: SettleRule,
    pub reserved: u64,
    /// The usage count the limit settles on, when the response gave it.
    pub used: Option<u64>,
    /// What the request is finally billed: the usage (less `unbilled`), nothing when
    /// refunded, the reservation when kept. (A bucket that has filled up again since
    /// admission takes a refund only as far as full.)
    pub charged: u64,
    /// Usage beyond the reservation that an empty bucket could not take.
    pub unbilled: u64,
}

impl Settled<'_> {
    /// Of `excess` usage beyond the reservation, the bucket took `taken`.
    fn charged_excess(&mut self, excess: u64, taken: u64) {
        self.charged = self.reserved + taken;
        self.unbilled = excess - taken;
    }
}

/// What settling one reservation does to its bucket.
enum Move {
    None,
    Refund(u64),
    Charge(u64),
}

impl Engine {
    /// Ends a lease (`Decision::lease`): settles its limits by how the response ended
    /// and gives back its in-flight slots. `None` for a lease that is not open (never
    /// given, or ended already): each lease ends once.
    pub fn settle(&self, lease: u64, ending: Ending) -> Option<Vec<Settled<'_>>> {
        let (_, lease) = self.leases.open.remove(&lease)?;
        lease.release_slots();
        let mut settled: Vec<Settled> = (lease.reservations.iter())
            .map(|r| {
                let (mut s, step) = settle_one(
                    r.reserved,
                    r.settle,
                    ending,
                    &self.policy.limits[r.limit].name,
                );
                match step {
                    Move::None => {}
                    Move::Refund(n) => {
                        r.state.refund(&r.key, n);
                    }
                    Move::Charge(n) => s.charged_excess(n, r.state.charge(&r.key, n)),
                }
                s
            })
            .collect();
        if !lease.shared.is_empty() {
            self.settle_shared(&lease, ending, &mut settled);
        }
        Some(settled)
    }

    /// Settles a lease's cluster-scoped reservations and releases its slots in one call
    /// to the store. When it does not answer, reservations stay spent and slots end
    /// with their lease's TTL.
    fn settle_shared<'e>(&'e self, lease: &Lease, ending: Ending, out: &mut Vec<Settled<'e>>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut call = ScriptCall::new("settle", &lease.shared_id, lease.shared.len());
        // (index in `out`, index in the call's keys, the excess it charges) per
        // reservation sent.
        let mut sent = Vec::new();
        for held in &lease.shared {
            match held {
                SharedHeld::Reservation {
                    limit,
                    store_key,
                    reserved,
                    settle,
                } => {
                    let (s, step) =
                        settle_one(*reserved, *settle, ending, &self.policy.limits[*limit].name);
                    let state = &self.limits[*limit];
                    let key = store_key.clone();
                    let excess = match step {
                        Move::None => {
                            out.push(s);
                            continue;
                        }
                        Move::Refund(n) => {
                            call.push(key, "r", [state.period().into(), n.into(), 0]);
                            0
                        }
                        Move::Charge(n) => {
                            let numbers = [state.period(), state.tau(), n].map(u128::from);
                            call.push(key, "g", numbers);
                            n
                        }
                    };
                    sent.push((out.len(), call.keys.len() - 1, excess));
                    out.push(s);
                }
                SharedHeld::Slot { store_key } => call.push(store_key.clone(), "x", [0; 3]),
            }
        }
        if call.keys.is_empty() {
            return; // every reservation kept, no slot: nothing to tell the store
        }
        let reply = call.run(&*shared.client);
        // (A change of the store's state is reported by the next admission.)
        let reply = reply.ok().filter(|r| r.len() == call.keys.len());
        for &(at, key, excess) in &sent {
            let s = &mut out[at];
            match &reply {
                None => {
                    s.rule = SettleRule::KeptStoreUnavailable;
                    s.charged = s.reserved;
                    s.unbilled = 0;
                }
                Some(r) if excess > 0 => {
                    s.charged_excess(excess, u64::try_from(r[key]).unwrap_or(0).min(excess))
                }
                Some(_) => {}
            }
        }
    }

    /// Leases open right now (requests holding reservations or slots).
    pub fn open_leases(&self) -> usize {
        self.leases.len()
    }

    /// Requests in flight under each `[[concurrency]]` cap, by name.
    pub fn in_flight(&self) -> Vec<(String, u64)> {
        self.policy
            .concurrency
            .iter()
            .zip(&self.caps)
            .map(|(c, s)| (c.name.clone(), s.in_flight()))
            .collect()
    }

    /// The cells a limit's bucket for `key` has left now (`None`: no such limit).
    pub fn limit_remaining(&self, limit: &str, key: &str) -> Option<u32> {
        let i = self.policy.limits.iter().position(|l| l.name == limit)?;
        Some(self.limits[i].remaining(key).0)
    }

    /// Gives back what a request took before a later step refused it.
    pub(super) fn undo(&self, lease: Lease, taken: &[(&LimitState, Cow<'_, str>, u64)]) {
        lease.release_slots();
        let reserved = (lease.reservations.iter()).map(|r| (&*r.state, r.key.as_str(), r.reserved));
        let taken = taken
            .iter()
            .map(|(state, key, cost)| (*state, key.as_ref(), *cost));
        for (state, key, cells) in reserved.chain(taken) {
            state.refund(key, cells);
        }
    }
}

/// How one reservation settles: what to report (before any excess is charged) and
/// what to do to its bucket.
fn settle_one(reserved: u64, settle: Settle, ending: Ending, name: &str) -> (Settled<'_>, Move) {
    let mut s = Settled {
        limit: name,
        rule: SettleRule::Kept,
        reserved,
        used: None,
        charged: reserved,
        unbilled: 0,
    };
    let step = match ending {
        Ending::Keep => Move::None,
        Ending::Refund => {
            s.rule = SettleRule::Refunded;
            s.charged = 0;
            Move::Refund(reserved)
        }
        Ending::Usage(usage) => match usage.count(settle) {
            None => {
                s.rule = SettleRule::KeptUsageIncomplete;
                Move::None
            }
            Some(used) => {
                s.rule = SettleRule::Usage;
                s.used = Some(used);
                if used < reserved {
                    s.charged = used;
                    Move::Refund(reserved - used)
                } else if used > reserved {
                    Move::Charge(used - reserved)
                } else {
                    Move::None
                }
            }
        },
    };
    (s, step)
}
