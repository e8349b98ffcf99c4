//! The answers of the directory, per account name: found and not found
//! kept for `cache_for`, a lookup under way shared by every request for
//! the same user (one query, the others wait on it), bounded in size (the
//! oldest entry goes first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::Answer;

/// Most users the cache holds by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The receiving side of a lookup under way: `Some` once it is answered.
pub type Waiter = watch::Receiver<Option<Answer>>;

/// What the cache has for a user.
pub enum Lookup {
    /// An answer still fresh.
    Ready(Answer),
    /// A lookup is under way: wait on it.
    Joined(Waiter),
    /// Nothing: the caller makes the lookup, answers through `Pending`.
    Started(Pending, Waiter),
}

/// The right (and duty) to answer one lookup.
pub struct Pending {
    key: Box<str>,
    generation: u64,
    tx: watch::Sender<Option<Answer>>,
}

enum Slot {
    Ready { answer: Answer, until: Instant },
    Pending(Waiter),
}

struct Entry {
    slot: Slot,
    generation: u64,
}

struct Inner {
    map: HashMap<Box<str>, Entry>,
    /// Keys in insertion order, with the generation inserted (stale pairs
    /// are skipped, and dropped when the queue grows past twice the map).
    order: VecDeque<(Box<str>, u64)>,
    next_generation: u64,
}

/// The cache of answers.
pub struct Cache {
    inner: Mutex<Inner>,
    capacity: usize,
    keep_for: Duration,
}

impl Cache {
    /// A cache of at most `capacity` users, answers kept for `keep_for`.
    pub fn new(capacity: usize, keep_for: Duration) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
            }),
            capacity: capacity.max(1),
            keep_for,
        }
    }

    /// The answer for `key`, the lookup under way, or a new lookup to make.
    pub fn get(&self, key: &str, now: Instant) -> Lookup {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = inner.map.get(key) {
            match &entry.slot {
                Slot::Ready { answer, until } if *until > now => {
                    return Lookup::Ready(answer.clone());
                }
                // A lookup whose task ended without answering is not waited on.
                Slot::Pending(rx) if rx.has_changed().is_ok() => {
                    return Lookup::Joined(rx.clone());
                }
                _ => {}
            }
        }
        let (tx, rx) = watch::channel(None);
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let key: Box<str> = key.into();
        inner.map.insert(
            key.clone(),
            Entry {
                slot: Slot::Pending(rx.clone()),
                generation,
            },
        );
        inner.order.push_back((key.clone(), generation));
        inner.evict(self.capacity);
        Lookup::Started(
            Pending {
                key,
                generation,
                tx,
            },
            rx,
        )
    }

    /// Answers a lookup: every waiter gets `answer`; a found user or no such
    /// user is kept for `keep_for`, an error is not kept.
    pub fn finish(&self, pending: Pending, answer: Answer, now: Instant) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let ours = inner
                .map
                .get(&pending.key)
                .is_some_and(|e| e.generation == pending.generation);
            if ours {
                if matches!(answer, Answer::Unavailable(_)) {
                    inner.map.remove(&pending.key);
                } else if let Some(entry) = inner.map.get_mut(&pending.key) {
                    entry.slot = Slot::Ready {
                        answer: answer.clone(),
                        until: now + self.keep_for,
                    };
                }
            }
        }
        pending.tx.send_replace(Some(answer));
    }

    /// Users held now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Holds no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops the oldest entries while over `capacity`.
    fn evict(&mut self, capacity: usize) {
        while self.map.len() > capacity {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.map.remove(&key);
            }
        }
        if self.order.len() > 2 * capacity {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Unavailable;
    use std::sync::Arc;

    fn found(g: &str) -> Answer {
        Answer::Found(Arc::from(vec![Box::<str>::from(g)]))
    }

    #[test]
    fn answers_kept_shared_and_bounded() {
        let cache = Cache::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let Lookup::Started(p, mut rx) = cache.get("alice", t0) else {
            panic!("a first lookup starts")
        };
        let Lookup::Joined(mut rx2) = cache.get("alice", t0) else {
            panic!("a second one waits on it")
        };
        cache.finish(p, found("cn=g"), t0);
        assert!(matches!(&*rx.borrow_and_update(), Some(Answer::Found(_))));
        assert!(matches!(&*rx2.borrow_and_update(), Some(Answer::Found(_))));
        assert!(matches!(
            cache.get("alice", t0),
            Lookup::Ready(Answer::Found(_))
        ));
        // Expired: looked up again.
        assert!(matches!(
            cache.get("alice", t0 + Duration::from_secs(61)),
            Lookup::Started(..)
        ));
        // An error is not kept.
        let Lookup::Started(p, _) = cache.get("bob", t0) else {
            panic!()
        };
        cache.finish(p, Answer::Unavailable(Unavailable::Timeout), t0);
        assert!(matches!(cache.get("bob", t0), Lookup::Started(..)));
        // Bounded: the oldest goes.
        for u in ["carol", "dave", "erin"] {
            if let Lookup::Started(p, _) = cache.get(u, t0) {
                cache.finish(p, Answer::NoSuchUser, t0);
            }
        }
        assert_eq!(cache.len(), 2);
        assert!(matches!(
            cache.get("erin", t0),
            Lookup::Ready(Answer::NoSuchUser)
        ));
    }

    #[test]
    fn an_abandoned_lookup_is_not_waited_on() {
        let cache = Cache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let Lookup::Started(p, _rx) = cache.get("alice", t0) else {
            panic!()
        };
        drop(p);
        assert!(matches!(cache.get("alice", t0), Lookup::Started(..)));
    }

    #[test]
    fn the_order_queue_stays_bounded() {
        let cache = Cache::new(3, Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..100 {
            for u in ["a", "b"] {
                if let Lookup::Started(p, _) = cache.get(u, t0) {
                    cache.finish(p, Answer::NoSuchUser, t0);
                }
            }
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.order.len() <= 6 + 1, "{}", inner.order.len());
    }
}
