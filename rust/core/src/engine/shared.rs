//! Cluster-scoped limits and caps (`scope = "cluster"`): their buckets and slots live in
//! a store that speaks the Redis protocol, shared by every replica. The engine builds
//! the arguments of the store's script (store/limits.lua) and reads its replies; a
//! `StoreClient` (rust/store) runs it. One call admits a request against every
//! cluster-scoped limit and cap it meets, all or nothing; one call settles what it held
//! when its response ends.
//!
//! When the store does not answer, `on_failure` decides: `local` judges by this
//! replica's own buckets (the same ones a local limit uses), `deny` refuses with 503,
//! `allow` lets the request through unlimited.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::decision::StoreEvent;
use crate::policy::{Policy, Settle};

/// Runs the limits script on the store.
pub trait StoreClient: Send + Sync {
    /// EVALSHA of store/limits.lua with `keys` and `args`: its integers, or why the store
    /// did not answer within its timeout (or answered with an error).
    fn run(&self, keys: &[String], args: &[String]) -> Result<Vec<i64>, String>;
    /// A change of the store's state that no request has reported yet.
    fn take_event(&self) -> Option<StoreEvent>;
}

/// What a request gets when the store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// This replica's own buckets judge it (the default).
    #[default]
    Local,
    /// 503: fail closed.
    Deny,
    /// Not limited.
    Allow,
}

/// The store, and the names of the policy's keys in it.
pub(super) struct Shared {
    pub(super) client: Arc<dyn StoreClient>,
    pub(super) on_failure: OnFailure,
    /// Per limit and per cap: `}:l:<name>:<definition hash>` (after the key's tag).
    limit_suffix: Vec<String>,
    cap_suffix: Vec<String>,
    /// Lease ids: a random prefix per engine, then a count.
    lease_prefix: String,
    next_lease: AtomicU64,
}

/// What an admission asks of the store for one cluster-scoped limit or cap.
pub(super) enum Pending<'a> {
    Limit {
        index: usize,
        key: std::borrow::Cow<'a, str>,
        cost: u64,
    },
    Cap {
        index: usize,
        key: std::borrow::Cow<'a, str>,
    },
}

/// What an allowed request holds in the store until its response ends.
pub(super) enum SharedHeld {
    Reservation {
        limit: usize,
        store_key: String,
        reserved: u64,
        settle: Settle,
    },
    Slot {
        store_key: String,
    },
}

impl Shared {
    pub(super) fn new(
        client: Arc<dyn StoreClient>,
        on_failure: OnFailure,
        policy: &Policy,
    ) -> Self {
        let suffix = |kind: &str, name: &str, fingerprint: &str| {
            let hash = Sha256::digest(fingerprint.as_bytes());
            format!("}}:{kind}:{name}:{}", crate::cert::hex(&hash[..4]))
        };
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u64(std::process::id().into());
        Shared {
            client,
            on_failure,
            limit_suffix: (policy.limits.iter())
                .map(|l| suffix("l", &l.name, &l.fingerprint))
                .collect(),
            cap_suffix: (policy.concurrency.iter())
                .map(|c| suffix("c", &c.name, &c.fingerprint))
                .collect(),
            lease_prefix: format!("{:016x}-", random.finish()),
            next_lease: AtomicU64::new(0),
        }
    }

    /// A lease id no other replica gives.
    pub(super) fn lease_id(&self) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.lease_prefix)
    }

    /// `ztp:{<key value>}:l:<name>:<hash>`: the key value is the hash tag, so a Redis
    /// Cluster keeps an identity's keys in one slot; braces in it are escaped so the tag
    /// is always the whole value.
    pub(super) fn store_key(&self, pending: &Pending) -> String {
        let (key, suffix) = match pending {
            Pending::Limit { index, key, .. } => (key, &self.limit_suffix[*index]),
            Pending::Cap { index, key } => (key, &self.cap_suffix[*index]),
        };
        let mut out = String::with_capacity(6 + key.len() + suffix.len());
        out.push_str("ztp:{");
        for c in key.chars() {
            match c {
                '%' => out.push_str("%25"),
                '{' => out.push_str("%7B"),
                '}' => out.push_str("%7D"),
                c => out.push(c),
            }
        }
        out.push_str(suffix);
        out
    }
}

/// One call of the store's script (store/limits.lua): its keys and arguments — the
/// store's clock, the operation and the lease id, then a kind and three numbers per key.
pub(super) struct ScriptCall {
    pub(super) keys: Vec<String>,
    args: Vec<String>,
}

impl ScriptCall {
    pub(super) fn new(op: &str, lease: &str, keys: usize) -> ScriptCall {
        let mut args = Vec::with_capacity(3 + 4 * keys);
        args.extend(["0", op, lease].map(str::to_owned));
        ScriptCall {
            keys: Vec::with_capacity(keys),
            args,
        }
    }

    pub(super) fn push(&mut self, key: String, kind: &str, numbers: [u128; 3]) {
        self.keys.push(key);
        self.args.push(kind.to_owned());
        self.args.extend(numbers.map(|n| n.to_string()));
    }

    pub(super) fn run(&self, client: &dyn StoreClient) -> Result<Vec<i64>, String> {
        client.run(&self.keys, &self.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl StoreClient for Nothing {
        fn run(&self, _: &[String], _: &[String]) -> Result<Vec<i64>, String> {
            Err("none".into())
        }
        fn take_event(&self) -> Option<StoreEvent> {
            None
        }
    }

    #[test]
    fn keys_tag_the_whole_value_and_name_the_definition() {
        let policy = crate::policy::load(
            r#"
[[rule]]
name = "all"
effect = "allow"
when = "true"
[[limit]]
name = "req"
rate = "10/s"
scope = "cluster"
"#,
            "p.toml",
        )
        .unwrap();
        let s = Shared::new(Arc::new(Nothing), OnFailure::Local, &policy);
        let k = |v: &str| {
            s.store_key(&Pending::Limit {
                index: 0,
                key: v.into(),
                cost: 1,
            })
        };
        let alice = k("alice");
        assert!(alice.starts_with("ztp:{alice}:l:req:"), "{alice}");
        assert_eq!(alice.len(), "ztp:{alice}:l:req:".len() + 8);
        // `}` in a value cannot end the tag early, and values stay distinct.
        assert_eq!(k("a}b{c%"), alice.replace("alice", "a%7Db%7Bc%25"));
        assert_ne!(k("a%7D"), k("a}"));
        assert_ne!(s.lease_id(), s.lease_id());
    }
}
