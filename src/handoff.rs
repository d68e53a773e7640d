//! The hand-off of one client connection between its connection thread and a worker.
//!
//! The connection thread parks the connection here and queues a job naming this slot and a
//! generation. Exactly one of two things then happens: a worker claims it (and later hands it
//! back, or the claim is dropped by a panic and the slot reports it lost), or the queue timeout
//! passes first and the connection thread takes it back to answer 503 itself. A stale job whose
//! generation no longer matches claims nothing, so a request is never served twice or late.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};

enum State<T> {
    Idle,
    Queued(u64, T),
    Working,
    Done(u64, T, bool),
    Lost(u64),
}

pub struct Handoff<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
}

/// What the connection thread gets back.
pub enum Waited<T> {
    /// A worker served the request; `bool` = the connection may carry another request.
    Done(T, bool),
    /// No worker took it before the deadline; the connection thread answers (503 queue_timeout).
    Expired(T),
    /// The worker that had it panicked; the connection is gone.
    Lost,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            state: Mutex::new(State::Idle),
            cv: Condvar::new(),
        }
    }
}

impl<T> Handoff<T> {
    /// Parks `item` for the job with generation `gen`.
    pub fn put(&self, gen: u64, item: T) {
        *self.state.lock() = State::Queued(gen, item);
    }

    /// Takes the item back if no worker has claimed it (the job could not be queued).
    pub fn take_back(&self, gen: u64) -> Option<T> {
        let mut s = self.state.lock();
        match std::mem::replace(&mut *s, State::Idle) {
            State::Queued(g, item) if g == gen => Some(item),
            other => {
                *s = other;
                None
            }
        }
    }

    /// A worker claims the item for job `gen`; `None` if it expired or is not this job's.
    pub fn claim(&self, gen: u64) -> Option<Claim<'_, T>> {
        let mut s = self.state.lock();
        match std::mem::replace(&mut *s, State::Idle) {
            State::Queued(g, item) if g == gen => {
                *s = State::Working;
                Some(Claim {
                    handoff: self,
                    gen,
                    item: Some(item),
                })
            }
            other => {
                *s = other;
                None
            }
        }
    }

    /// Waits for the worker's answer; past `queue_deadline` an unclaimed item is taken back.
    pub fn wait(&self, gen: u64, queue_deadline: Instant) -> Waited<T> {
        let mut s = self.state.lock();
        loop {
            match std::mem::replace(&mut *s, State::Idle) {
                State::Done(g, item, keep) if g == gen => return Waited::Done(item, keep),
                State::Lost(g) if g == gen => return Waited::Lost,
                State::Queued(g, item) if g == gen && Instant::now() >= queue_deadline => {
                    return Waited::Expired(item)
                }
                other => {
                    let queued = matches!(other, State::Queued(..));
                    *s = other;
                    if queued {
                        self.cv.wait_until(&mut s, queue_deadline);
                    } else {
                        self.cv.wait(&mut s);
                    }
                }
            }
        }
    }
}

/// A worker's hold on the item. Dropped without `finish` (a panic), it reports the item lost.
pub struct Claim<'a, T> {
    handoff: &'a Handoff<T>,
    gen: u64,
    item: Option<T>,
}

impl<T> Claim<'_, T> {
    pub fn item(&mut self) -> &mut T {
        self.item
            .as_mut()
            .expect("a claim holds its item until finished")
    }

    /// Hands the item back to the connection thread.
    pub fn finish(mut self, keep_alive: bool) {
        if let Some(item) = self.item.take() {
            *self.handoff.state.lock() = State::Done(self.gen, item, keep_alive);
            self.handoff.cv.notify_all();
        }
    }
}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        if self.item.take().is_some() {
            *self.handoff.state.lock() = State::Lost(self.gen);
            self.handoff.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn worker_claims_and_hands_back() {
        let h = Arc::new(Handoff::default());
        h.put(1, "conn");
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            let mut c = h2.claim(1).unwrap();
            assert_eq!(*c.item(), "conn");
            c.finish(true);
        });
        match h.wait(1, Instant::now() + Duration::from_secs(5)) {
            Waited::Done(item, keep) => assert!(item == "conn" && keep),
            _ => panic!("expected Done"),
        }
        t.join().unwrap();
    }

    #[test]
    fn unclaimed_item_expires_and_stale_job_claims_nothing() {
        let h: Handoff<&str> = Handoff::default();
        h.put(7, "conn");
        match h.wait(7, Instant::now() + Duration::from_millis(20)) {
            Waited::Expired(item) => assert_eq!(item, "conn"),
            _ => panic!("expected Expired"),
        }
        assert!(
            h.claim(7).is_none(),
            "the expired job must not be served late"
        );
        h.put(8, "conn");
        assert!(
            h.claim(7).is_none(),
            "an old job never claims a newer request"
        );
        assert!(h.claim(8).is_some());
    }

    #[test]
    fn a_panicking_worker_reports_the_item_lost() {
        let h = Arc::new(Handoff::default());
        h.put(1, String::from("conn"));
        let h2 = h.clone();
        let r = std::thread::spawn(move || {
            let _c = h2.claim(1).unwrap();
            panic!("boom");
        })
        .join();
        assert!(r.is_err());
        assert!(matches!(h.wait(1, Instant::now()), Waited::Lost));
    }

    #[test]
    fn a_claimed_item_is_waited_for_past_the_queue_deadline() {
        let h = Arc::new(Handoff::default());
        h.put(1, 5u32);
        let claim_taken = Arc::new(std::sync::Barrier::new(2));
        let (h2, b2) = (h.clone(), claim_taken.clone());
        let t = std::thread::spawn(move || {
            let c = h2.claim(1).unwrap();
            b2.wait();
            std::thread::sleep(Duration::from_millis(50));
            c.finish(false);
        });
        claim_taken.wait();
        assert!(matches!(h.wait(1, Instant::now()), Waited::Done(5, false)));
        t.join().unwrap();
    }
}
