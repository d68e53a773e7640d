//! The bounded job queue between the front end and the worker pool: one first-come-first-served
//! line per client group under a mutex (`policy/fair.rs` decides which group a free worker serves
//! next, and what a full queue gives up), and a stack of sleeping workers. A push wakes the
//! worker that went to sleep last (its stack and buffers are still in cache), and a worker that
//! finds the queue empty sleeps at once. A popped job comes with a `Serving` guard that counts it
//! in its group's workers until it is dropped.
//!
//! It replaced a `crossbeam-channel` bounded channel, measured under `wrk -c50` on 2 shared
//! cores: that channel's receive spins and calls `sched_yield` before sleeping (about five
//! yields per request, each a context switch while other threads were runnable), and a
//! first-in-first-out wake-up rotates through every idle worker (64 workers cost ~40 % more CPU
//! per request than 16 did).

use std::sync::atomic::{
    AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::policy::fair::{Fair, Group, Load};
use crate::runnable::Runnable;

pub struct Queue<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    /// Mirrors of the queued items and sleeping workers, written under the lock, so that
    /// `spare` (asked by every worker after every kept-alive response) takes no lock.
    queued: AtomicUsize,
    sleeping: AtomicUsize,
    /// Workers running now: out of `pop_timeout` and not in a blocking call (`runnable.rs`).
    running: AtomicIsize,
    /// A push wakes a sleeping worker only while fewer than this many run.
    run_cap: isize,
}

struct Inner<T> {
    items: Fair<T>,
    /// Sleeping workers, the most recent last.
    idle: Vec<Arc<Sleeper>>,
    /// Workers woken and not yet back at the queue: each will take an item, so a wake-up is
    /// needed only for items beyond them.
    waking: usize,
}

struct Sleeper {
    thread: Thread,
    /// Set (under the queue's lock) by the push that took this sleeper off the stack.
    woken: AtomicBool,
}

thread_local! {
    static ME: Arc<Sleeper> = Arc::new(Sleeper {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
}

impl<T> Queue<T> {
    /// A queue whose pushes always wake a sleeping worker.
    #[cfg(test)]
    pub fn new(capacity: usize) -> Self {
        Self::with_run_cap(capacity, usize::MAX)
    }

    /// A queue whose pushes wake a sleeping worker only while fewer than `run_cap` workers run.
    pub fn with_run_cap(capacity: usize, run_cap: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                items: Fair::default(),
                idle: Vec::new(),
                waking: 0,
            }),
            capacity,
            queued: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            running: AtomicIsize::new(0),
            run_cap: isize::try_from(run_cap).unwrap_or(isize::MAX),
        }
    }

    /// A worker thread starts: it runs until its first `pop_timeout`.
    pub fn worker_started(&self) {
        self.running.fetch_add(1, SeqCst);
    }

    /// Takes the most recently idle worker off the stack, if any, for the caller to unpark
    /// once the lock is released.
    fn take_sleeper(inner: &mut Inner<T>) -> Option<Arc<Sleeper>> {
        if inner.items.len() <= inner.waking {
            return None; // the workers already woken take them
        }
        let sleeper = inner.idle.pop();
        if let Some(s) = &sleeper {
            s.woken.store(true, Relaxed);
            inner.waking += 1;
        }
        sleeper
    }

    /// Wakes a sleeping worker if requests wait: for a worker that goes to block, and for the
    /// front end's periodic check (which catches a request left waiting behind a worker that
    /// blocked somewhere unmarked).
    pub fn nudge(&self) {
        if self.queued.load(SeqCst) == 0 {
            return;
        }
        let mut inner = self.lock();
        let sleeper = Self::take_sleeper(&mut inner);
        self.mirror(&inner);
        drop(inner);
        if let Some(s) = sleeper {
            s.thread.unpark();
        }
    }

    /// Updates the mirrors after a change under the lock.
    fn mirror(&self, inner: &Inner<T>) {
        self.queued.store(inner.items.len(), SeqCst);
        self.sleeping.store(inner.idle.len(), Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent queue.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `item` at the back of its group's line and, unless enough workers run to take it
    /// soon, wakes the most recently idle worker; gives it back if the queue is full.
    pub fn try_push(&self, group: Group, item: T) -> Result<(), T> {
        let mut inner = self.lock();
        if inner.items.len() >= self.capacity {
            return Err(item);
        }
        inner.items.push(group, item);
        // Stored before `running` is read; a worker about to block lowers `running` before it
        // reads `queued`: one of the two sees the other and wakes a sleeper.
        self.queued.store(inner.items.len(), SeqCst);
        let sleeper = if self.running.load(SeqCst) < self.run_cap {
            Self::take_sleeper(&mut inner)
        } else {
            None
        };
        self.mirror(&inner);
        drop(inner);
        if let Some(s) = sleeper {
            s.thread.unpark();
        }
        Ok(())
    }

    /// The next item (`policy/fair.rs`), waiting at most `timeout` for one; counted in its
    /// group's workers while the `Serving` lives.
    #[cfg(test)]
    pub fn pop_timeout(&self, timeout: Duration) -> Option<(Serving<'_, T>, T)> {
        self.pop_or_sleep(timeout, || {})
    }

    /// `pop_timeout`, calling `sleeping` (outside the queue's lock) once, if the worker goes to
    /// sleep for want of an item: the worker gives back what it keeps for its own next
    /// request (its idle upstream connection, `upstream/pool.rs`).
    pub fn pop_or_sleep(
        &self,
        timeout: Duration,
        sleeping: impl FnOnce(),
    ) -> Option<(Serving<'_, T>, T)> {
        self.running.fetch_sub(1, SeqCst);
        let item = self.pop_waiting(timeout, sleeping);
        self.running.fetch_add(1, SeqCst);
        item
    }

    fn pop_waiting(
        &self,
        timeout: Duration,
        sleeping: impl FnOnce(),
    ) -> Option<(Serving<'_, T>, T)> {
        let mut sleeping = Some(sleeping);
        let deadline = Instant::now() + timeout;
        let me = ME.with(Arc::clone);
        let mut stacked = false;
        let mut inner = self.lock();
        loop {
            if stacked && me.woken.load(Relaxed) {
                stacked = false; // the push that woke us took us off the stack
                inner.waking = inner.waking.saturating_sub(1);
            }
            let item = inner.items.pop();
            let now = Instant::now();
            if item.is_some() || now >= deadline {
                if stacked {
                    inner.idle.retain(|s| !Arc::ptr_eq(s, &me));
                }
                self.mirror(&inner);
                return item.map(|(group, item)| (Serving { queue: self, group }, item));
            }
            if !stacked {
                me.woken.store(false, Relaxed);
                inner.idle.push(me.clone());
                stacked = true;
            }
            self.mirror(&inner);
            drop(inner);
            if let Some(f) = sleeping.take() {
                f();
            }
            std::thread::park_timeout(deadline - now);
            inner = self.lock();
        }
    }

    /// True if nothing waits in the queue and a worker sleeps, ready for the next push: a
    /// worker may then keep its connection for a moment (`pool/keep.rs`) without anyone
    /// waiting on it.
    pub fn spare(&self) -> bool {
        self.queued.load(Relaxed) == 0 && self.sleeping.load(Relaxed) > 0
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Requests of `group` in workers and waiting (`max_client_requests`).
    pub fn load(&self, group: &Group) -> usize {
        self.lock().items.load(group)
    }

    /// The queue is full: the waiting item a request of `newcomer` may take the place of
    /// (`Fair::evict_for`), for the caller to answer.
    pub fn evict_for(&self, newcomer: &Group) -> Option<T> {
        let mut inner = self.lock();
        let item = inner.items.evict_for(newcomer);
        self.mirror(&inner);
        item
    }

    /// A worker would serve its kept connection's next request (of `group`) itself: allowed if
    /// the group is under `max` (0 = no cap) and no other group waits with fewer in workers
    /// (`Fair::may_keep`); then counted like a popped job.
    pub fn keep(&self, group: Group, max: usize) -> Option<Serving<'_, T>> {
        let mut inner = self.lock();
        let over = max > 0 && inner.items.load(&group) >= max;
        if over || !inner.items.may_keep(&group) {
            return None;
        }
        inner.items.enter(group.clone());
        Some(Serving { queue: self, group })
    }

    /// Groups with a request in a worker or waiting, and the `n` holding the most.
    pub fn groups(&self, n: usize) -> (usize, Vec<Load>) {
        let inner = self.lock();
        (inner.items.active(), inner.items.top(n))
    }
}

/// A request of `group` in a worker: counted in its group until dropped (also on a panic).
pub struct Serving<'q, T> {
    queue: &'q Queue<T>,
    group: Group,
}

impl<T> Drop for Serving<'_, T> {
    fn drop(&mut self) {
        self.queue.lock().items.done(&self.group);
    }
}

impl<T: Send> Runnable for Queue<T> {
    /// This worker goes to block: if requests wait and too few workers run, another wakes.
    fn blocks(&self) {
        let running = self.running.fetch_sub(1, SeqCst) - 1;
        if running < self.run_cap && self.queued.load(SeqCst) > 0 {
            self.nudge();
        }
    }

    fn resumes(&self) {
        self.running.fetch_add(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    impl<T> Queue<T> {
        /// The next item, its group's count left as it was when the guard dropped.
        fn pop_item(&self, timeout: Duration) -> Option<T> {
            self.pop_timeout(timeout).map(|(_, item)| item)
        }
    }

    fn ip(n: u8) -> Group {
        Group::Ip(std::net::IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn a_worker_serves_the_group_with_the_fewest_in_workers_and_its_guard_frees_it() {
        let q = Queue::new(8);
        for i in 0..3 {
            q.try_push(ip(2), i).unwrap();
        }
        let (greedy, first) = q.pop_timeout(Duration::ZERO).unwrap();
        assert_eq!(first, 0);
        q.try_push(ip(3), 10).unwrap();
        let (light, item) = q.pop_timeout(Duration::ZERO).unwrap();
        assert_eq!(
            item, 10,
            "the light client, before the greedy one's older requests"
        );
        assert_eq!(q.groups(10).0, 2);
        drop(light);
        assert_eq!(
            q.groups(10).0,
            1,
            "a group with nothing in workers or waiting is freed"
        );
        assert!(q.keep(ip(2), 1).is_none(), "ip(2) is at a cap of 1");
        let kept = q.keep(ip(2), 0).expect("nothing else waits");
        assert_eq!(q.load(&ip(2)), 4, "one popped, one kept, two waiting");
        q.try_push(ip(4), 20).unwrap();
        assert!(
            q.keep(ip(2), 0).is_none(),
            "ip(4) waits with none in workers"
        );
        drop((greedy, kept));
        assert_eq!(
            q.evict_for(&ip(5)),
            Some(2),
            "the newest of the largest group"
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn refuses_beyond_capacity_and_pops_in_order() {
        let q = Queue::new(2);
        assert!(q.try_push(Group::All, 1).is_ok() && q.try_push(Group::All, 2).is_ok());
        assert_eq!(q.try_push(Group::All, 3), Err(3));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_item(Duration::ZERO), Some(1));
        assert_eq!(q.pop_item(Duration::ZERO), Some(2));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn an_empty_queue_times_out_and_a_push_wakes_a_sleeper() {
        let q = Arc::new(Queue::new(1));
        let t = Instant::now();
        assert_eq!(q.pop_item(Duration::from_millis(30)), None);
        assert!(t.elapsed() >= Duration::from_millis(30));
        let q2 = q.clone();
        let sleeper = std::thread::spawn(move || q2.pop_item(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        q.try_push(Group::All, 7).unwrap();
        assert_eq!(sleeper.join().unwrap(), Some(7));
    }

    #[test]
    fn spare_only_while_nothing_waits_and_a_worker_sleeps() {
        let q = Arc::new(Queue::new(4));
        assert!(!q.spare(), "no worker sleeps yet");
        let q2 = q.clone();
        let sleeper = std::thread::spawn(move || q2.pop_item(Duration::from_secs(10)));
        let t = Instant::now();
        while !q.spare() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(q.spare(), "a worker sleeps and nothing waits");
        q.try_push(Group::All, 1).unwrap();
        assert_eq!(sleeper.join().unwrap(), Some(1));
        assert!(!q.spare(), "the sleeper took the item: none sleeps");
        q.try_push(Group::All, 2).unwrap();
        assert!(!q.spare(), "an item waits");
    }

    /// Spawns a worker that sleeps in the queue until woken; returns once it sleeps.
    fn sleeper(q: &Arc<Queue<u32>>) -> std::thread::JoinHandle<Option<u32>> {
        let q2 = q.clone();
        let before = q.sleeping.load(SeqCst);
        let h = std::thread::spawn(move || {
            q2.worker_started();
            q2.pop_item(Duration::from_secs(10))
        });
        while q.sleeping.load(SeqCst) == before {
            std::thread::sleep(Duration::from_millis(1));
        }
        h
    }

    #[test]
    fn a_push_wakes_a_sleeper_only_while_few_workers_run() {
        let q = Arc::new(Queue::with_run_cap(8, 1));
        let s = sleeper(&q);
        q.worker_started(); // this thread: one worker running, at the cap
        q.try_push(Group::All, 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            q.sleeping.load(SeqCst),
            1,
            "not woken: a running worker will take it"
        );
        // The running worker goes to block with the request still waiting: the sleeper wakes.
        Runnable::blocks(&*q);
        assert_eq!(s.join().unwrap(), Some(1));
        Runnable::resumes(&*q);
        // Nobody running (both threads above are done): a push wakes at once.
        q.running.store(0, SeqCst);
        let s = sleeper(&q);
        let t = Instant::now();
        q.try_push(Group::All, 2).unwrap();
        assert_eq!(s.join().unwrap(), Some(2));
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");
    }

    #[test]
    fn the_front_ends_nudge_wakes_a_sleeper_for_a_waiting_request() {
        let q = Arc::new(Queue::with_run_cap(8, 1));
        let s = sleeper(&q);
        q.worker_started(); // a worker that blocks somewhere unmarked
        q.try_push(Group::All, 3).unwrap();
        let t = Instant::now();
        q.nudge();
        assert_eq!(s.join().unwrap(), Some(3));
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");
        q.nudge(); // nothing waits: no-op
    }

    #[test]
    fn every_item_is_popped_once_by_many_workers() {
        let q = Arc::new(Queue::new(10_000));
        for i in 0..10_000u32 {
            q.try_push(Group::All, i).unwrap();
        }
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(i) = q.pop_item(Duration::from_millis(50)) {
                        got.push(i);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }
}
