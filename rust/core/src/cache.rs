//! A small bounded map for the parse-once caches (certificates, tokens). Eviction is
//! first-in first-out: entries are cheap to rebuild, and FIFO needs no bookkeeping
//! on a hit, which keeps the warm path to one lock and one hash lookup.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

pub struct BoundedCache<K, V> {
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Inner<K, V> {
    map: FastMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                map: FastMap::default(),
                order: VecDeque::new(),
            }),
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.lock().map.get(key).cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        let mut inner = self.lock();
        if inner.map.insert(key.clone(), value).is_none() {
            inner.order.push_back(key);
            while inner.map.len() > self.capacity {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        if inner.map.remove(key).is_some() {
            inner.order.retain(|k| k.borrow() != key);
        }
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock leaves a map that is still consistent
        // (every operation above is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let cache = BoundedCache::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.insert(3, "c");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&3), Some("c"));
        cache.remove(&2);
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.len(), 1);
    }
}
