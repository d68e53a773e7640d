//! Which workers can run now. A worker inside a call that may block on the network (an upstream
//! read, write or connect, a client read or paced write, a retry's back-off) is not running.
//! The job queue (`pool/queue.rs`) wakes a sleeping worker for a new request only while fewer
//! than a few workers run, so that a stream of fast requests is served by the workers already
//! awake instead of waking a new one for each (a context switch per request); a worker that is
//! about to block while requests wait wakes one in its place (docs/PERFORMANCE.md "Workers
//! awake"). Here: the marker the stages put around their blocking calls, and who is told.

use std::cell::RefCell;
use std::sync::Arc;

/// Told when the current thread blocks and resumes.
pub trait Runnable: Send + Sync {
    fn blocks(&self);
    fn resumes(&self);
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn Runnable>>> = const { RefCell::new(None) };
}

/// From now on, this thread's blocking calls are reported to `to`.
pub fn register(to: Arc<dyn Runnable>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(to));
}

/// Runs `f`, which may block, with this thread counted as not running (also if `f` panics).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(to) = current.as_deref() else {
            return f();
        };
        struct Resume<'a>(&'a dyn Runnable);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.resumes();
            }
        }
        to.blocks();
        let _resume = Resume(to);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};

    #[derive(Default)]
    struct Count(AtomicIsize, AtomicIsize);

    impl Runnable for Count {
        fn blocks(&self) {
            self.0.fetch_sub(1, SeqCst);
            self.1.fetch_add(1, SeqCst);
        }
        fn resumes(&self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn blocking_calls_are_reported_in_pairs_even_when_they_panic() {
        assert_eq!(blocking(|| 7), 7, "nothing registered: just runs");
        let count = Arc::new(Count::default());
        register(count.clone());
        assert_eq!(
            blocking(|| count.0.load(SeqCst)),
            -1,
            "not running meanwhile"
        );
        let caught = std::panic::catch_unwind(|| blocking(|| panic!("a bug")));
        assert!(caught.is_err());
        assert_eq!(count.0.load(SeqCst), 0, "resumed after the panic too");
        assert_eq!(blocking(|| blocking(|| count.0.load(SeqCst))), -2);
        assert_eq!(count.0.load(SeqCst), 0);
        assert_eq!(count.1.load(SeqCst), 4);
    }
}
