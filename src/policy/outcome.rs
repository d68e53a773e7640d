//! The one classification of how a request, or one upstream attempt, ended — by origin (the
//! client, sluice, the upstream) — and what each policy reads from it: the reason word and
//! status the client gets, whether an attempt may be retried (`retry.rs` decides with the
//! method and body), what the breaker learns, the metrics label and the access-log fields.
//! docs/ARCHITECTURE.md "Where each decision is made" lists the consumers.
//!
//! Not here: turning a `ureq::Error` into an `AttemptFailure` (that reads ureq's types:
//! `upstream/classify.rs`), or the breaker's state machine (`breaker.rs`).

use std::time::Duration;

pub use super::reason::Origin;
use super::reason::Reason;

/// How an admitted request ended, as the breaker sees it (`breaker.rs` acts on it; the
/// classification here decides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Connect errors, timeouts, resets, 502/503/504 from the upstream.
    Failure,
    /// Says nothing about the upstream (client abort, sluice's own rejection).
    Neutral,
}

/// How one upstream attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Refused, unreachable, DNS failure: nothing reached the upstream.
    Connect,
    /// Connect did not finish in time: nothing reached the upstream.
    ConnectTimeout,
    /// Reset or closed after the request went out (often a stale pooled connection).
    Reset,
    /// No response (or a stalled body) within the read timeout.
    Timeout,
    /// A malformed response.
    Protocol,
    /// A response head over sluice's limit (64 KiB, or more header fields than ureq takes): a
    /// 502, but it says nothing about the upstream's availability.
    HeadTooLarge,
    /// A 502, 503 or 504 from the upstream.
    Status(u16),
}

impl AttemptFailure {
    /// The reason sluice gives the client when this was the last attempt.
    pub fn reason(self) -> Reason {
        match self {
            AttemptFailure::Connect => Reason::ConnectFailed,
            AttemptFailure::ConnectTimeout => Reason::ConnectTimeout,
            AttemptFailure::Timeout => Reason::UpstreamTimeout,
            AttemptFailure::Reset
            | AttemptFailure::Protocol
            | AttemptFailure::HeadTooLarge
            | AttemptFailure::Status(_) => Reason::UpstreamError,
        }
    }

    /// What the breaker learns when this was the last attempt (`client_paced`: its body was
    /// streamed from the client as it arrived, so the upstream waited on the client's pace):
    /// what its reason's outcome says, but neutral for
    /// - a response head over the limit — a healthy upstream sends one (a large `Set-Cookie` or
    ///   CSP), and counting it would open the breaker for everyone;
    /// - a client-paced reset or malformed answer: the upstream may have given up on a client
    ///   pausing within sluice's allowance (its own body timeout), which shows only later —
    ///   when sluice writes the rest of the body, or reads the answer after it — and no client
    ///   may make sluice count a failure against the upstream (README "What can hold a
    ///   worker"). A connect failure still counts (nothing was sent yet), and so does a
    ///   timeout: sluice's read timeout runs only once the whole body was sent, so the
    ///   upstream had all of it and did not answer (a hung upstream must open the breaker for
    ///   uploads too).
    pub fn verdict(self, client_paced: bool) -> Verdict {
        match self {
            AttemptFailure::HeadTooLarge => Verdict::Neutral,
            AttemptFailure::Connect | AttemptFailure::ConnectTimeout | AttemptFailure::Timeout => {
                Outcome::Sluice(self.reason()).verdict()
            }
            _ if client_paced => Verdict::Neutral,
            _ => Outcome::Sluice(self.reason()).verdict(),
        }
    }
}

/// How one proxied request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status and the response reached the client whole.
    Upstream(u16),
    /// sluice answered itself (a refusal, a bad request, or an upstream failure before any
    /// response byte).
    Sluice(Reason),
    /// The upstream failed after response bytes went to the client: truncated on purpose.
    Truncated,
    /// The client went away (or broke its body) before the response was delivered.
    ClientAbort,
}

impl Outcome {
    /// Who caused it.
    pub fn origin(self) -> Origin {
        match self {
            Outcome::Upstream(_) | Outcome::Truncated => Origin::Upstream,
            Outcome::ClientAbort => Origin::Client,
            Outcome::Sluice(r) => r.origin(),
        }
    }

    /// True if the request went to the upstream (answered, failed or timed out there): only
    /// these make the response-time statistics, so that a burst of instant refusals cannot pull
    /// the average down while the upstream is slow.
    pub fn proxied(self) -> bool {
        self.origin() == Origin::Upstream
    }

    /// What the breaker learns: only the upstream's own failures count against it.
    pub fn verdict(self) -> Verdict {
        match self {
            Outcome::Upstream(502..=504) | Outcome::Truncated => Verdict::Failure,
            Outcome::Upstream(s) if s < 200 => Verdict::Neutral, // 101: not the upstream's failure
            Outcome::Upstream(_) => Verdict::Success,
            Outcome::Sluice(r) if r.origin() == Origin::Upstream => Verdict::Failure,
            Outcome::Sluice(_) | Outcome::ClientAbort => Verdict::Neutral,
        }
    }

    /// The metrics label and access-log `reason`: `ok`, `upstream_5xx`, a reason word,
    /// `upstream_truncated`, `client_abort`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Upstream(s) if s < 500 => "ok",
            Outcome::Upstream(_) => "upstream_5xx",
            Outcome::Sluice(r) => r.as_str(),
            Outcome::Truncated => "upstream_truncated",
            Outcome::ClientAbort => "client_abort",
        }
    }

    /// Success in the Python service's sense: a response with a status below 500.
    pub fn is_success(self) -> bool {
        match self {
            Outcome::Upstream(s) => s < 500,
            Outcome::Sluice(r) => r.status() < 500,
            Outcome::Truncated | Outcome::ClientAbort => false,
        }
    }

    /// The status code the client saw (0 if none).
    pub fn status(self) -> u16 {
        match self {
            Outcome::Upstream(s) => s,
            Outcome::Sluice(r) => r.status(),
            Outcome::Truncated | Outcome::ClientAbort => 0,
        }
    }
}

/// Every outcome label, in the order Prometheus prints them.
pub const OUTCOME_LABELS: [&str; 4 + Reason::ALL.len()] = {
    let mut out = [""; 4 + Reason::ALL.len()];
    out[0] = "ok";
    out[1] = "upstream_5xx";
    out[2] = "upstream_truncated";
    out[3] = "client_abort";
    let mut i = 0;
    while i < Reason::ALL.len() {
        out[4 + i] = Reason::ALL[i].as_str();
        i += 1;
    }
    out
};

/// What one proxied request came to: how it ended and what it cost.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// The client connection stays open for its next request.
    pub keep_alive: bool,
    pub attempts: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_time: Duration,
    /// The response body was cut while the worker waited on a client slower than the upstream
    /// (within its allowance): the upstream may have given up on its own stalled writes.
    pub client_paced: bool,
}

impl Finished {
    pub fn new(outcome: Outcome, keep_alive: bool) -> Self {
        Finished {
            outcome,
            keep_alive,
            attempts: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_time: Duration::ZERO,
            client_paced: false,
        }
    }

    /// What the breaker learns from how the relay ended: the outcome's verdict, but neutral for
    /// a body cut while the worker waited on its client — an upstream with a send timeout
    /// gives up on a reader pausing within sluice's allowance, and no client may make sluice
    /// count a failure against the upstream (README "What can hold a worker").
    pub fn verdict(&self) -> Verdict {
        if self.client_paced {
            Verdict::Neutral
        } else {
            self.outcome.verdict()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_counts_gateway_failures_but_not_application_errors() {
        assert_eq!(Outcome::Upstream(503).verdict(), Verdict::Failure);
        assert_eq!(Outcome::Upstream(500).verdict(), Verdict::Success);
        assert_eq!(Outcome::Upstream(404).verdict(), Verdict::Success);
        assert_eq!(
            Outcome::Sluice(Reason::ConnectFailed).verdict(),
            Verdict::Failure
        );
        assert_eq!(
            Outcome::Sluice(Reason::QueueFull).verdict(),
            Verdict::Neutral
        );
        assert_eq!(Outcome::ClientAbort.verdict(), Verdict::Neutral);
        assert_eq!(Outcome::Truncated.verdict(), Verdict::Failure);
    }

    #[test]
    fn client_errors_never_count_against_the_upstream() {
        for r in Reason::ALL {
            let o = Outcome::Sluice(r);
            if o.origin() != Origin::Upstream {
                assert_eq!(o.verdict(), Verdict::Neutral, "{r:?}");
            }
        }
        assert_eq!(Outcome::Sluice(Reason::BadRequest).origin(), Origin::Client);
    }

    #[test]
    fn only_requests_that_reached_the_upstream_count_as_proxied() {
        assert!(Outcome::Upstream(200).proxied());
        assert!(Outcome::Sluice(Reason::UpstreamTimeout).proxied());
        assert!(!Outcome::Sluice(Reason::QueueFull).proxied());
        assert!(!Outcome::Sluice(Reason::CircuitOpen).proxied());
        assert!(!Outcome::Sluice(Reason::BadRequest).proxied());
        assert!(!Outcome::ClientAbort.proxied());
    }

    #[test]
    fn every_label_is_listed_once() {
        let mut labels = OUTCOME_LABELS.to_vec();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), OUTCOME_LABELS.len());
        for o in [
            Outcome::Upstream(200),
            Outcome::Upstream(502),
            Outcome::Truncated,
            Outcome::ClientAbort,
        ]
        .into_iter()
        .chain(Reason::ALL.map(Outcome::Sluice))
        {
            assert!(OUTCOME_LABELS.contains(&o.label()), "{o:?}");
        }
    }

    #[test]
    fn last_attempt_failure_names_its_reason() {
        assert_eq!(AttemptFailure::Connect.reason(), Reason::ConnectFailed);
        assert_eq!(AttemptFailure::Timeout.reason(), Reason::UpstreamTimeout);
        assert_eq!(
            AttemptFailure::ConnectTimeout.reason(),
            Reason::ConnectTimeout
        );
        assert_eq!(AttemptFailure::Status(503).reason(), Reason::UpstreamError);
        assert_eq!(AttemptFailure::HeadTooLarge.reason(), Reason::UpstreamError);
    }

    #[test]
    fn a_head_over_the_limit_is_a_502_but_never_a_breaker_failure() {
        assert_eq!(
            AttemptFailure::HeadTooLarge.verdict(false),
            Verdict::Neutral
        );
        assert_eq!(AttemptFailure::Protocol.verdict(false), Verdict::Failure);
        assert_eq!(AttemptFailure::Reset.verdict(false), Verdict::Failure);
        assert_eq!(AttemptFailure::Connect.verdict(false), Verdict::Failure);
    }

    #[test]
    fn a_body_cut_while_the_worker_waited_on_its_client_is_neutral() {
        let mut fin = Finished::new(Outcome::Truncated, false);
        assert_eq!(fin.verdict(), Verdict::Failure);
        fin.client_paced = true;
        assert_eq!(fin.verdict(), Verdict::Neutral);
    }

    #[test]
    fn a_failure_of_a_body_streamed_at_the_clients_pace_is_neutral_unless_a_connect_or_timeout() {
        for f in [
            AttemptFailure::Reset,
            AttemptFailure::Protocol,
            AttemptFailure::Status(503),
            AttemptFailure::HeadTooLarge,
        ] {
            assert_eq!(f.verdict(true), Verdict::Neutral, "{f:?}");
        }
        // The read timeout runs once the whole body was sent: the upstream's.
        assert_eq!(AttemptFailure::Timeout.verdict(true), Verdict::Failure);
        assert_eq!(AttemptFailure::Connect.verdict(true), Verdict::Failure);
        assert_eq!(
            AttemptFailure::ConnectTimeout.verdict(true),
            Verdict::Failure
        );
        assert_eq!(
            AttemptFailure::Reset.reason(),
            Reason::UpstreamError,
            "still a 502"
        );
    }
}
