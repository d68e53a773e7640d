//! sluice's tooling, kept apart from the proxy: a small blocking HTTP/1.1 client (`client`), the
//! load generator behind `sluice-load` and `sluice-demo` (`load`), and the fault-injecting test
//! upstream behind `sluice-upstream` and the end-to-end tests (`upstream`). It speaks HTTP with
//! sluice's own wire-format layer (`sluice::http`), so both ends parse the same way.

pub mod client;
pub mod load;
pub mod upstream;
