//! Admission to the queue: a request is let in while fewer than `workers + max_queue_size`
//! requests are waiting or being served. Counting both (rather than the channel's free slots)
//! means a worker that has just answered but not yet gone back to the queue is not mistaken for
//! a busy one, so `max_queue_size = 0` really means "run when a worker is free, else 503".

use std::sync::atomic::{AtomicUsize, Ordering::AcqRel};
use std::sync::Arc;

/// The number of requests in the system, and its limit.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    inside: Arc<AtomicUsize>,
}

/// One admitted request; leaving is dropping it (after its worker is done, or a panic).
#[derive(Debug)]
pub struct Ticket {
    inside: Arc<AtomicUsize>,
}

impl Admission {
    pub fn new(workers: usize, max_queue_size: usize) -> Self {
        Admission {
            limit: workers + max_queue_size,
            inside: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The channel capacity that never refuses an admitted request.
    pub fn capacity(&self) -> usize {
        self.limit
    }

    /// Lets one request in, or says the system is full.
    pub fn try_enter(&self) -> Option<Ticket> {
        let before = self.inside.fetch_add(1, AcqRel);
        if before >= self.limit {
            self.inside.fetch_sub(1, AcqRel);
            return None;
        }
        Some(Ticket {
            inside: self.inside.clone(),
        })
    }

    #[cfg(test)]
    pub fn inside(&self) -> usize {
        self.inside.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inside.fetch_sub(1, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_workers_plus_queue_and_frees_on_drop() {
        let a = Admission::new(2, 1);
        let tickets: Vec<_> = (0..3).map(|_| a.try_enter().expect("room")).collect();
        assert!(a.try_enter().is_none(), "the fourth request is refused");
        drop(tickets);
        assert_eq!(a.inside(), 0);
        assert!(a.try_enter().is_some());
    }

    #[test]
    fn zero_queue_means_one_request_per_worker() {
        let a = Admission::new(1, 0);
        let t = a.try_enter().unwrap();
        assert!(a.try_enter().is_none());
        drop(t);
        assert!(a.try_enter().is_some(), "a freed worker admits at once");
    }
}
