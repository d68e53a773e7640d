//! sluice's idle upstream connections (docs/ARCHITECTURE.md "The upstream client"): the set the
//! transport takes a connection from before it connects and puts one back into when ureq is done
//! with it in a reusable state (`transport.rs`). A worker thread's own last connection first,
//! without a lock (`Own`); on a miss the shared set's most recently used, so the connections in
//! use stay warm and the rest age out; one older than `pool_idle_timeout` is closed, never used;
//! at most `pool_maxsize` are kept (the oldest goes first). The shared set's lock is held only to
//! push or pop: connections are probed and closed outside it.
//!
//! Also what the current attempt did with its connection (`Wire`): whether it was reused, whether
//! anything was written to it and whether any response byte came back — what the retry of a
//! request that failed on a stale connection is decided from (`policy/retry.rs`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Idle connections `T`, each with the time it went idle. The clock is the caller's (`now`).
///
/// Two places hold them: each worker thread's `Own` slot — the connection it used last, taken
/// again for its next request without any lock (the shape of a thread with its own upstream
/// connection) — and the shared set, most recently used last, touched only on a miss: when a
/// thread's slot is empty (its first request, or it gave its connection back before it went to
/// sleep: `Own::give_back`) or already full.
pub struct IdleSet<T> {
    /// The shared idle connections: oldest at the front, most recently used at the back.
    idle: Mutex<VecDeque<(T, Instant)>>,
    /// Idle connections in all, the shared ones and those in threads' `Own` slots: never more
    /// than `max` once a put returns.
    count: AtomicUsize,
    /// When the shared set's oldest connection reaches `timeout`, in nanoseconds since `base`
    /// (`u64::MAX`: none): a worker that takes or puts its own slot's connection, touching no
    /// lock, checks it and closes what is due — the shared set is purged whenever a request
    /// goes by, as if every request touched it.
    due: AtomicU64,
    base: Instant,
    max: usize,
    timeout: Duration,
}

/// The idle connection one thread keeps for its own next request (a `thread_local!` of the
/// set's user). Whatever it holds is counted in its set's `max`.
pub struct Own<T>(Cell<Option<Kept<T>>>);

struct Kept<T> {
    home: Weak<IdleSet<T>>,
    item: T,
    since: Instant,
}

impl<T> Own<T> {
    pub const fn new() -> Self {
        Own(Cell::new(None))
    }

    /// This thread goes to sleep: its connection goes to the shared set, for the other workers.
    pub fn give_back(&self) {
        if let Some(kept) = self.0.take() {
            let mut closed = Vec::new();
            kept.settle(&mut closed);
        }
    }

    /// True if the slot holds a connection.
    #[cfg(test)]
    pub fn holds(&self) -> bool {
        let kept = self.0.take();
        let holds = kept.is_some();
        self.0.set(kept);
        holds
    }
}

impl<T> Default for Own<T> {
    fn default() -> Self {
        Own::new()
    }
}

/// A thread that ends closes the connection it kept.
impl<T> Drop for Own<T> {
    fn drop(&mut self) {
        if let Some(kept) = self.0.take() {
            if let Some(home) = kept.home.upgrade() {
                home.count.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl<T> Kept<T> {
    /// Out of a thread's slot into its set's shared part (still counted), or closed if the set
    /// is gone.
    fn settle(self, closed: &mut Vec<T>) {
        match self.home.upgrade() {
            Some(home) => home.put_shared(self.item, self.since, Instant::now(), closed),
            None => closed.push(self.item),
        }
    }
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
            count: AtomicUsize::new(0),
            due: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            max,
            timeout,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Closes the shared set's too-old connections if one is due (no lock otherwise).
    fn purge_due(&self, now: Instant, closed: &mut Vec<T>) {
        if self.nanos(now) >= self.due.load(Relaxed) {
            let mut idle = self.idle.lock();
            self.purge(&mut idle, now, closed);
        }
    }

    fn expired(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.timeout
    }

    /// The connection `own` (this thread's slot) holds, if it is this set's and not too old —
    /// no lock —, else the shared set's most recently used one that is not too old, if any.
    /// The ones too old (and one of a set a reload replaced) are moved to `closed`, for the
    /// caller to drop once the lock is released.
    pub fn take(self: &Arc<Self>, own: &Own<T>, now: Instant, closed: &mut Vec<T>) -> Option<T> {
        if let Some(kept) = own.0.take() {
            // This set's own (the usual case) is known by address, with no atomic on the set's
            // shared counts: a `Weak` keeps its allocation, so no other set can share it.
            if std::ptr::eq(kept.home.as_ptr(), Arc::as_ptr(self)) {
                self.count.fetch_sub(1, Relaxed);
                if !self.expired(kept.since, now) {
                    self.purge_due(now, closed);
                    return Some(kept.item);
                }
                closed.push(kept.item);
            } else {
                if let Some(home) = kept.home.upgrade() {
                    home.count.fetch_sub(1, Relaxed);
                }
                closed.push(kept.item);
            }
        }
        self.take_shared(now, closed)
    }

    fn take_shared(&self, now: Instant, closed: &mut Vec<T>) -> Option<T> {
        let mut idle = self.idle.lock();
        while let Some((item, since)) = idle.pop_back() {
            self.count.fetch_sub(1, Relaxed);
            if !self.expired(since, now) {
                self.purge(&mut idle, now, closed);
                return Some(item);
            }
            closed.push(item);
        }
        self.purge(&mut idle, now, closed);
        None
    }

    /// Puts `item` back, idle from `now`: into `own` (this thread's slot) while the set holds
    /// fewer than `max`, what the slot held before going to the shared set; else into the
    /// shared set, which closes its oldest past `max`. What no longer fits goes to `closed`.
    pub fn put(self: &Arc<Self>, own: &Own<T>, item: T, now: Instant, closed: &mut Vec<T>) {
        if self.count.fetch_add(1, Relaxed) < self.max {
            let kept = Kept {
                home: Arc::downgrade(self),
                item,
                since: now,
            };
            if let Some(before) = own.0.replace(Some(kept)) {
                match before.home.upgrade() {
                    Some(home) => home.put_shared(before.item, before.since, now, closed),
                    None => closed.push(before.item),
                }
            }
            self.purge_due(now, closed);
            return;
        }
        // Counted already: the shared set closes the oldest past the maximum.
        self.put_shared(item, now, now, closed);
    }

    /// Puts `item`, idle since `since` and counted already, into the shared set in its place by
    /// age, then closes the oldest past `max` and those too old at `now`.
    fn put_shared(&self, item: T, since: Instant, now: Instant, closed: &mut Vec<T>) {
        let mut idle = self.idle.lock();
        let at = idle
            .iter()
            .rposition(|(_, s)| *s <= since)
            .map_or(0, |i| i + 1);
        idle.insert(at, (item, since));
        while self.count.load(Relaxed) > self.max {
            let Some((old, _)) = idle.pop_front() else {
                break; // the rest are in threads' slots, each under the maximum when put
            };
            self.count.fetch_sub(1, Relaxed);
            closed.push(old);
        }
        self.purge(&mut idle, now, closed);
    }

    /// Drops the too-old connections from the old end; notes when the next is due. Every
    /// change to the shared set ends here.
    fn purge(&self, idle: &mut VecDeque<(T, Instant)>, now: Instant, closed: &mut Vec<T>) {
        while idle
            .front()
            .is_some_and(|(_, since)| self.expired(*since, now))
        {
            if let Some((old, _)) = idle.pop_front() {
                self.count.fetch_sub(1, Relaxed);
                closed.push(old);
            }
        }
        let due = idle.front().map_or(u64::MAX, |(_, since)| {
            let timeout = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
            self.nanos(*since).saturating_add(timeout)
        });
        self.due.store(due, Relaxed);
    }

    /// How many connections are idle now, in the shared set and in threads' slots.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
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

    fn new_set<T>(max: usize) -> Arc<IdleSet<T>> {
        Arc::new(IdleSet::new(max, ms(4000)))
    }

    #[test]
    fn the_most_recently_used_connection_is_taken_first() {
        let t = Instant::now();
        let set = new_set(10);
        let (own, mut closed) = (Own::new(), Vec::new());
        for (i, c) in ["a", "b", "c"].into_iter().enumerate() {
            set.put(&own, c, t + ms(i as u64), &mut closed);
        }
        assert_eq!(set.take(&own, t + ms(10), &mut closed), Some("c"));
        set.put(&own, "c", t + ms(11), &mut closed);
        assert_eq!(set.take(&own, t + ms(12), &mut closed), Some("c"));
        assert_eq!(set.take(&own, t + ms(12), &mut closed), Some("b"));
        assert_eq!(set.take(&own, t + ms(12), &mut closed), Some("a"));
        assert_eq!(set.take(&own, t + ms(12), &mut closed), None);
        assert!(closed.is_empty());
    }

    #[test]
    fn a_thread_takes_its_own_connection_first_and_others_see_it_only_once_given_back() {
        let t = Instant::now();
        let set = new_set(10);
        let (one, two, mut closed) = (Own::new(), Own::new(), Vec::new());
        set.put(&one, "one's", t, &mut closed);
        set.put(&two, "two's", t + ms(1), &mut closed);
        assert!(one.holds() && two.holds());
        assert_eq!(
            set.take(&one, t + ms(2), &mut closed),
            Some("one's"),
            "not the newer two's"
        );
        set.put(&one, "one's", t + ms(3), &mut closed);
        let three = Own::new();
        assert_eq!(
            set.take(&three, t + ms(4), &mut closed),
            None,
            "slots are not shared"
        );
        two.give_back(); // two goes to sleep
        assert!(!two.holds());
        assert_eq!(set.take(&three, t + ms(5), &mut closed), Some("two's"));
        assert_eq!(set.len(), 1, "one's is still kept");
        assert!(closed.is_empty());
    }

    #[test]
    fn a_connection_idle_for_the_timeout_is_closed_never_taken() {
        let t = Instant::now();
        let set = new_set(10);
        let (own, other, mut closed) = (Own::new(), Own::new(), Vec::new());
        set.put(&other, "old", t, &mut closed);
        other.give_back();
        set.put(&own, "new", t + ms(3000), &mut closed);
        own.give_back();
        // At 4 s "old" has been idle for the whole timeout: closed when the set is touched.
        assert_eq!(set.take(&own, t + ms(4000), &mut closed), Some("new"));
        assert_eq!(closed, ["old"]);
        set.put(&own, "new", t + ms(4000), &mut closed);
        assert_eq!(set.take(&own, t + ms(7999), &mut closed), Some("new"));
        set.put(&own, "new", t + ms(8000), &mut closed);
        assert_eq!(
            set.take(&own, t + ms(12_000), &mut closed),
            None,
            "in the slot too"
        );
        assert_eq!(closed, ["old", "new"]);
        assert!(set.is_empty());
    }

    #[test]
    fn putting_one_back_closes_the_oldest_past_the_maximum_and_the_too_old() {
        let t = Instant::now();
        let set = new_set(2);
        let (a, b, c, mut closed) = (Own::new(), Own::new(), Own::new(), Vec::new());
        set.put(&a, 1, t, &mut closed);
        a.give_back();
        set.put(&b, 2, t + ms(1), &mut closed);
        set.put(&c, 3, t + ms(2), &mut closed); // the third: into the shared set, the oldest out
        assert_eq!(closed, [1]);
        assert_eq!(set.len(), 2);
        b.give_back();
        set.put(&a, 4, t + ms(4001), &mut closed);
        assert_eq!(closed, [1, 2], "over the maximum: the oldest goes");
        assert_eq!(set.take(&a, t + ms(4001), &mut closed), Some(4));
        let at = t + ms(4002);
        assert_eq!(
            set.take(&a, at, &mut closed),
            None,
            "3 is too old at 4002 ms"
        );
        assert_eq!(closed, [1, 2, 3]);
        let none = new_set::<i32>(0);
        none.put(&a, 5, t, &mut closed);
        assert_eq!(closed, [1, 2, 3, 5], "pool_maxsize 0 keeps nothing");
        assert!(!a.holds());
    }

    #[test]
    fn a_shared_connection_past_the_timeout_is_closed_while_threads_only_use_their_slots() {
        let set = new_set(10);
        let t = Instant::now(); // after the set's creation, as every real put is
        let (busy, idle, mut closed) = (Own::new(), Own::new(), Vec::new());
        set.put(&idle, "shared", t, &mut closed);
        idle.give_back(); // its worker sleeps
        set.put(&busy, "busy's", t + ms(1000), &mut closed);
        assert_eq!(set.take(&busy, t + ms(3999), &mut closed), Some("busy's"));
        set.put(&busy, "busy's", t + ms(3999), &mut closed);
        assert!(closed.is_empty(), "not due yet");
        assert_eq!(set.take(&busy, t + ms(4000), &mut closed), Some("busy's"));
        assert_eq!(closed, ["shared"], "due at 4 s: closed by a slot's take");
        set.put(&busy, "busy's", t + ms(4001), &mut closed);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_kept_connection_of_a_replaced_set_is_closed_and_a_dead_threads_uncounted() {
        let t = Instant::now();
        let (old, new) = (new_set(10), new_set(10));
        let (own, mut closed) = (Own::new(), Vec::new());
        old.put(&own, "old agent's", t, &mut closed);
        assert_eq!(new.take(&own, t, &mut closed), None);
        assert_eq!(closed, ["old agent's"]);
        assert!(old.is_empty());
        let ends = Own::new();
        new.put(&ends, "kept", t, &mut closed);
        assert_eq!(new.len(), 1);
        drop(ends); // its thread ended
        assert!(new.is_empty());
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
