//! The one decision to refuse a request without forwarding it — shutdown (the drain's grace
//! ended), queue time run out, breaker open — and its `Retry-After`. The front end asks before queueing, the worker again
//! when it takes the request (the queue wait and the breaker may have changed); both use
//! `refusal`. Pure: the caller passes what it knows, no clock is read here.

use std::time::Duration;

use super::reason::Reason;

/// A refusal: the reason word and, for a 503, the seconds to put in `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal for `reason`; `wait` (how long until it may pass) becomes `Retry-After`,
    /// in whole seconds rounded up — never 0 while a wait remains.
    pub fn new(reason: Reason, wait: Option<Duration>) -> Self {
        Refusal {
            reason,
            retry_after: wait.map(|w| w.as_secs() + u64::from(w.subsec_nanos() > 0)),
        }
    }
}

/// What is known about a request when it may be refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gate {
    /// The drain's `shutdown_grace` is over: nothing more is forwarded. (While draining, a
    /// request that arrives on an open connection is still forwarded.)
    pub grace_over: bool,
    /// Time the request has waited for a worker so far.
    pub waited: Duration,
    pub queue_timeout: Duration,
    /// `Some(time until the probe)` while the breaker refuses requests.
    pub breaker_open_for: Option<Duration>,
}

/// Refuse, and why — in this order: shutdown, queue time run out, breaker open.
pub fn refusal(g: &Gate) -> Option<Refusal> {
    if g.grace_over {
        Some(Refusal::new(Reason::Shutdown, None))
    } else if g.waited > g.queue_timeout {
        Some(Refusal::new(Reason::QueueTimeout, None))
    } else {
        g.breaker_open_for
            .map(|left| Refusal::new(Reason::CircuitOpen, Some(left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate {
            queue_timeout: Duration::from_secs(30),
            ..Gate::default()
        }
    }

    #[test]
    fn a_fresh_request_on_a_healthy_proxy_passes() {
        assert_eq!(refusal(&gate()), None);
    }

    #[test]
    fn shutdown_comes_first_then_queue_time_then_the_breaker() {
        let all = Gate {
            grace_over: true,
            waited: Duration::from_secs(31),
            breaker_open_for: Some(Duration::from_secs(3)),
            ..gate()
        };
        assert_eq!(refusal(&all).unwrap().reason, Reason::Shutdown);
        let g = Gate {
            grace_over: false,
            ..all
        };
        assert_eq!(refusal(&g).unwrap().reason, Reason::QueueTimeout);
        let g = Gate {
            waited: Duration::from_secs(30),
            ..g
        };
        assert_eq!(
            refusal(&g),
            Some(Refusal {
                reason: Reason::CircuitOpen,
                retry_after: Some(3)
            })
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs =
            |ms| Refusal::new(Reason::CircuitOpen, Some(Duration::from_millis(ms))).retry_after;
        assert_eq!(secs(1), Some(1));
        assert_eq!(secs(2000), Some(2));
        assert_eq!(secs(2001), Some(3));
        assert_eq!(Refusal::new(Reason::QueueFull, None).retry_after, None);
    }
}
