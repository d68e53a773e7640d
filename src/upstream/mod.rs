//! The upstream side, driven by a worker with blocking I/O: the one agent (`agent`) over
//! sluice's TCP transport (`transport`, its buffers `buffers`) with the target's addresses cached (`resolve`) and its idle connections (`pool`), the upstream request (`request`), the attempts with
//! retries (`attempt`), cancellation when the client hangs up (`cancel`), the classification of ureq's errors (`classify`) and the response
//! relayed to the client (`relay`).

pub mod agent;
pub mod attempt;
pub mod buffers;
pub mod cancel;
pub mod classify;
pub mod pool;
pub mod relay;
pub mod request;
pub mod resolve;
pub mod transport;
