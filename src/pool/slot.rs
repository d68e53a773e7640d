//! A queued request's parking place, shared by its queue job and the front end's list of queue
//! deadlines. Whichever takes it first owns it: a worker (to serve it) or the front end (its time
//! in the queue ran out: 503 `queue_timeout`). So a request is never served twice, nor late.

use parking_lot::Mutex;

pub struct Slot<T>(Mutex<Option<T>>);

impl<T> Slot<T> {
    pub fn new(item: T) -> Self {
        Slot(Mutex::new(Some(item)))
    }

    /// The item, to the first caller only.
    pub fn take(&self) -> Option<T> {
        self.0.lock().take()
    }

    /// True once someone has taken the item.
    pub fn is_taken(&self) -> bool {
        self.0.lock().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    #[test]
    fn only_the_first_taker_gets_the_item() {
        let s = Slot::new("request");
        assert!(!s.is_taken());
        assert_eq!(s.take(), Some("request"));
        assert!(s.is_taken());
        assert_eq!(s.take(), None, "an expired request is never served late");
    }

    #[test]
    fn racing_takers_get_it_exactly_once() {
        for _ in 0..200 {
            let s = Arc::new(Slot::new(1u8));
            let won = Arc::new(AtomicUsize::new(0));
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let (s, won) = (s.clone(), won.clone());
                    std::thread::spawn(move || {
                        if s.take().is_some() {
                            won.fetch_add(1, Relaxed);
                        }
                    })
                })
                .collect();
            for r in racers {
                r.join().unwrap();
            }
            assert_eq!(won.load(Relaxed), 1);
        }
    }
}
