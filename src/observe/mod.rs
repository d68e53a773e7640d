//! What sluice tells its operators: counters and latency histograms (`metrics`, rendered by
//! `front/admin.rs`), the JSON access log line per request (`access_log`), the stderr log
//! (`log`) and whether the target's name resolves (`lookup`). Records what the stages report;
//! decides nothing about a request.

pub mod access_log;
pub mod log;
pub mod lookup;
pub mod metrics;
