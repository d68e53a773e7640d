//! Pure policy: every decision about a request that needs no socket, each made in one place and
//! unit-tested with an injected clock. The stages (`front`, `pool`, `upstream`) ask; nothing
//! here does I/O or imports a stage.
//!
//! - `reason`: the words for how a request ends; `outcome`: the one classification by origin.
//! - `refusal`: refuse without forwarding (shutdown, queue time, breaker) and `Retry-After`.
//! - `admission`: the bound on requests in the system (workers + queue).
//! - `fair`: client groups, which group a free worker serves next, what a full queue gives up.
//! - `breaker`, `retry`: the circuit breaker and the retry policy with its budget; `health`: what a
//!   health check's result means and the rise/fall counting the breaker acts on.
//! - `deadline`: one request's time on the upstream over all its attempts.
//! - `route`: which requests sluice answers itself and which go upstream.
//! - `headers`: what crosses sluice in each direction; `connection`: the keep-alive rule.

pub mod admission;
pub mod breaker;
pub mod connection;
pub mod deadline;
pub mod fair;
pub mod headers;
pub mod health;
pub mod outcome;
pub mod reason;
pub mod refusal;
pub mod retry;
pub mod route;
