//! The upstream side, driven by a worker with blocking I/O: the one agent (`agent`) over
//! sluice's TCP transport (`transport`, its buffers `buffers`) with the target's addresses cached (`resolve`) and its idle connections (`pool`), the upstream request (`request`), one request's
//! `exchange`, the attempts with retries (`attempt`), cancellation when the client hangs up (`cancel`), the classification of ureq's errors (`classify`), the response
//! relayed to the client (`relay`), and the health checker's thread (`health`).

pub mod agent;
pub mod attempt;
pub mod buffers;
pub mod cancel;
pub mod classify;
pub mod exchange;
pub mod health;
pub mod pool;
pub mod relay;
pub mod request;
pub mod resolve;
pub mod transport;
