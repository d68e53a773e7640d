//! sluice's idle upstream connections (docs/ARCHITECTURE.md "The upstream client"): the set the
//! transport takes a connection from before it connects and puts one back into when ureq is done
//! with it in a reusable state (`transport.rs`). Most recently used first, so the connections in
//! use stay warm and the rest age out; one older than `pool_idle_timeout` is closed, never used;
//! at most `pool_maxsize` are kept (the oldest goes first). The lock is held only to push or pop:
//! connections are probed and closed outside it.
//!
//! Also what the current attempt did with its connection (`Wire`): whether it was reused, whether
//! anything was written to it and whether any response byte came back — what the retry of a
//! request that failed on a stale connection is decided from (`policy/retry.rs`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Idle connections `T`, each with the time it went idle. The clock is the caller's (`now`).
pub struct IdleSet<T> {
    /// Oldest at the front, most recently used at the back.
    idle: Mutex<VecDeque<(T, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl<T> fmt::Debug for IdleSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleSet")
            .field("max", &self.max)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<T> IdleSet<T> {
    /// Keeps at most `max` connections, each at most `timeout`.
    pub fn new(max: usize, timeout: Duration) -> Self {
        IdleSet {
            idle: Mutex::new(VecDeque::new()),
            max,
            timeout,
        }
    }

    fn expired(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.timeout
    }

    /// The most recently used connection that is not too old, if any. The ones too old are
    /// moved to `closed`, for the caller to drop once the lock is released.
    pub fn take(&self, now: Instant, closed: &mut Vec<T>) -> Option<T> {
        let mut idle = self.idle.lock();
        while let Some((item, since)) = idle.pop_back() {
            if !self.expired(since, now) {
                self.purge(&mut idle, now, closed);
                return Some(item);
            }
            closed.push(item);
        }
        None
    }

    /// Puts `item` back, idle from `now`. What no longer fits (past `max`, or too old) goes to
    /// `closed`.
    pub fn put(&self, item: T, now: Instant, closed: &mut Vec<T>) {
        let mut idle = self.idle.lock();
        idle.push_back((item, now));
        while idle.len() > self.max {
            if let Some((old, _)) = idle.pop_front() {
                closed.push(old);
            }
        }
        self.purge(&mut idle, now, closed);
    }

    /// Drops the too-old connections from the old end.
    fn purge(&self, idle: &mut VecDeque<(T, Instant)>, now: Instant, closed: &mut Vec<T>) {
        while idle
            .front()
            .is_some_and(|(_, since)| self.expired(*since, now))
        {
            if let Some((old, _)) = idle.pop_front() {
                closed.push(old);
            }
        }
    }

    /// How many connections are idle now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the worker thread's current attempt did with its upstream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire {
    /// The connection came from the idle set (it was used before).
    pub reused: bool,
    /// Something was (or may have been) written to it.
    pub wrote: bool,
    /// At least one byte of a response came back on it.
    pub received: bool,
}

thread_local! {
    static WIRE: Cell<Wire> = const { Cell::new(Wire { reused: false, wrote: false, received: false }) };
    static FRESH: Cell<bool> = const { Cell::new(false) };
}

impl Wire {
    /// A new attempt starts: nothing known yet. With `fresh`, its connection is a new one,
    /// never one from the idle set.
    pub fn begin(fresh: bool) {
        WIRE.with(|w| w.set(Wire::default()));
        FRESH.with(|f| f.set(fresh));
    }

    /// What the current (or last) attempt did.
    pub fn get() -> Wire {
        WIRE.with(Cell::get)
    }

    pub(super) fn update(f: impl FnOnce(&mut Wire)) {
        WIRE.with(|w| {
            let mut v = w.get();
            f(&mut v);
            w.set(v);
        });
    }

    /// True if the current attempt must connect anew (asked once per attempt).
    pub(super) fn take_fresh() -> bool {
        FRESH.with(|f| f.replace(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_most_recently_used_connection_is_taken_first() {
        let t = Instant::now();
        let set = IdleSet::new(10, ms(4000));
        let mut closed = Vec::new();
        for (i, c) in ["a", "b", "c"].into_iter().enumerate() {
            set.put(c, t + ms(i as u64), &mut closed);
        }
        assert_eq!(set.take(t + ms(10), &mut closed), Some("c"));
        set.put("c", t + ms(11), &mut closed);
        assert_eq!(set.take(t + ms(12), &mut closed), Some("c"));
        assert_eq!(set.take(t + ms(12), &mut closed), Some("b"));
        assert_eq!(set.take(t + ms(12), &mut closed), Some("a"));
        assert_eq!(set.take(t + ms(12), &mut closed), None);
        assert!(closed.is_empty());
    }

    #[test]
    fn a_connection_idle_for_the_timeout_is_closed_never_taken() {
        let t = Instant::now();
        let set = IdleSet::new(10, ms(4000));
        let mut closed = Vec::new();
        set.put("old", t, &mut closed);
        set.put("new", t + ms(3000), &mut closed);
        // At 4 s "old" has been idle for the whole timeout: closed when the set is touched.
        assert_eq!(set.take(t + ms(4000), &mut closed), Some("new"));
        assert_eq!(closed, ["old"]);
        set.put("new", t + ms(4000), &mut closed);
        assert_eq!(set.take(t + ms(7999), &mut closed), Some("new"));
        set.put("new", t + ms(8000), &mut closed);
        assert_eq!(set.take(t + ms(12_000), &mut closed), None);
        assert_eq!(closed, ["old", "new"]);
        assert!(set.is_empty());
    }

    #[test]
    fn putting_one_back_closes_the_oldest_past_the_maximum_and_the_too_old() {
        let t = Instant::now();
        let set = IdleSet::new(2, ms(4000));
        let mut closed = Vec::new();
        set.put(1, t, &mut closed);
        set.put(2, t + ms(1), &mut closed);
        set.put(3, t + ms(2), &mut closed);
        assert_eq!(closed, [1]);
        assert_eq!(set.len(), 2);
        set.put(4, t + ms(4001), &mut closed);
        assert_eq!(
            closed,
            [1, 2],
            "3 is kept (idle 3999 ms), 2 is closed (4000 ms)"
        );
        let none = IdleSet::new(0, ms(4000));
        none.put(5, t, &mut closed);
        assert_eq!(closed, [1, 2, 5], "pool_maxsize 0 keeps nothing");
    }

    #[test]
    fn an_attempt_starts_with_nothing_known_and_fresh_is_asked_once() {
        Wire::update(|w| w.wrote = true);
        Wire::begin(true);
        assert_eq!(Wire::get(), Wire::default());
        assert!(Wire::take_fresh());
        assert!(!Wire::take_fresh());
    }
}
