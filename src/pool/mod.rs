//! The worker pool and what feeds it: the hand-off types (`handoff`), the bounded job queue
//! (`queue`), the slot a queued request waits in (`slot`) and the `max_concurrent_requests`
//! blocking worker threads (`worker`) that forward through the one upstream client, and what
//! their blocking calls set off (`marks`).

pub mod handoff;
pub mod keep;
pub mod marks;
pub mod queue;
pub mod slot;
pub mod worker;
