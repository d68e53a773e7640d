//! What a worker's blocking calls set off (`runnable.rs` marks every one: socket reads, writes
//! and connects, name look-ups, a retry's back-off). Two things: the job queue counts the
//! worker as not running (docs/ARCHITECTURE.md "Workers awake"), and the idle upstream
//! connection the worker keeps for its own next request goes to the shared idle set, where the
//! other workers find it (`upstream/pool.rs`, docs/ARCHITECTURE.md "The upstream client"). So
//! a worker holds a kept connection only while it runs: never across a slow request body, a
//! back-off or a write to a client that does not read. The one wait exempted is the worker's
//! wait for a kept client's next request (`keep.rs`, at most twice `KEEP`, made inside
//! `briefly`): the wait the kept connection is for (a wait that finds nothing gives it back at
//! once). And a request the worker answers without
//! the upstream (a refusal, a client gone while queued) gives it back when it ends
//! (`UnlessForwarded`): a worker serving a kept client's refused requests one after another
//! never blocks, and must not hold it meanwhile.

use std::cell::Cell;
use std::sync::Arc;

use crate::runnable::Runnable;
use crate::upstream::transport::give_back_idle;

/// A worker thread's marks: the queue's `Runnable`, and the kept connection given back.
pub struct WorkerMarks<R>(pub Arc<R>);

impl<R: Runnable> Runnable for WorkerMarks<R> {
    fn blocks(&self) {
        if !BRIEF.with(Cell::get) {
            give_back_idle();
        }
        self.0.blocks();
    }

    fn resumes(&self) {
        self.0.resumes();
    }
}

thread_local! {
    static BRIEF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, whose blocking calls wait at most a few milliseconds: the worker keeps its idle
/// upstream connection across them.
pub fn briefly<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BRIEF.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BRIEF.with(|b| b.replace(true)));
    f()
}

/// One request on the worker: when it ends (however: a return, a panic), the worker's kept idle
/// upstream connection goes to the shared set unless the request was `forwarded` (its attempt
/// took that connection, or put the one it used back).
#[derive(Default)]
pub struct UnlessForwarded(bool);

impl UnlessForwarded {
    pub fn forwarded(&mut self) {
        self.0 = true;
    }
}

impl Drop for UnlessForwarded {
    fn drop(&mut self) {
        if !self.0 {
            give_back_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Runnable for Count {
        fn blocks(&self) {
            self.0.fetch_add(1, SeqCst);
        }
        fn resumes(&self) {}
    }

    #[test]
    fn only_a_brief_wait_is_exempted_and_the_exemption_ends_with_it() {
        let count = Arc::new(Count::default());
        let marks = WorkerMarks(count.clone());
        briefly(|| {
            assert!(BRIEF.with(Cell::get));
            marks.blocks();
        });
        assert!(!BRIEF.with(Cell::get));
        let caught = std::panic::catch_unwind(|| briefly(|| panic!("a bug")));
        assert!(caught.is_err());
        assert!(!BRIEF.with(Cell::get), "restored after a panic too");
        marks.blocks();
        assert_eq!(count.0.load(SeqCst), 2, "the queue hears every one");
    }
}
