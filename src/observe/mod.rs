//! What sluice tells its operators: counters and latency histograms (`metrics`, rendered by
//! `front/admin.rs`), the JSON access log line per request (`access_log`) and the stderr log
//! (`log`), both written out through a bounded `outbox` by a thread of their own, and whether
//! the target's name resolves (`lookup`). Records what the stages report; decides nothing about
//! a request.

pub mod access_log;
pub mod log;
pub mod lookup;
pub mod metrics;
mod outbox;
