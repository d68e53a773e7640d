//! One request on its way through the upstream, as the worker hands it to the attempts
//! (`attempt.rs`) and the relay (`relay.rs`): the shared state, the settings and agent it
//! started with, its head and id, and its cancellation. Both stages read it; neither owns it.

use super::agent::Upstream;
use super::cancel::Cancel;
use super::request::Sendable;
use crate::config::Config;
use crate::state::Shared;

/// Size of the copy buffer each worker uses for response bodies.
pub const COPY_BUFFER: usize = 32 * 1024;

/// One request on its way through the upstream, and what it may do.
pub struct Exchange<'a> {
    pub shared: &'a Shared,
    pub cfg: &'a Config,
    pub upstream: &'a Upstream,
    pub head: &'a Sendable,
    pub request_id: &'a str,
    /// The breaker's half-open probe: one attempt, no retries.
    pub probe: bool,
    /// Set when a client hang-up (`abort_on_client_close`) or the end of a drain's grace
    /// cancels the exchange.
    pub cancel: Option<&'a Cancel>,
}

impl Exchange<'_> {
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.is_some_and(Cancel::cancelled)
    }

    /// Nothing more is read from the client: from now on its hang-up cancels the exchange.
    pub(super) fn client_done(&self) {
        if let Some(c) = self.cancel {
            c.waiting();
        }
    }
}
