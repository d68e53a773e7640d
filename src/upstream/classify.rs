//! Turns a `ureq::Error` into the one `AttemptFailure` vocabulary (`policy/outcome.rs`), once;
//! retries, the breaker, the status code and the metrics all read that.

use std::io;

use ureq::Timeout;

use super::buffers::RESPONSE_HEAD_MAX;
use crate::policy::outcome::AttemptFailure;

/// How an attempt that ended in `e` failed.
pub fn classify(e: &ureq::Error) -> AttemptFailure {
    use io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => AttemptFailure::ConnectTimeout,
        ureq::Error::Timeout(_) => AttemptFailure::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => AttemptFailure::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => AttemptFailure::Connect,
        ureq::Error::LargeResponseHeader(..) => AttemptFailure::HeadTooLarge,
        ureq::Error::Protocol(p) if too_many_fields(p) => AttemptFailure::HeadTooLarge,
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::NotFound => AttemptFailure::Connect,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                AttemptFailure::Reset
            }
            K::TimedOut | K::WouldBlock => AttemptFailure::Timeout,
            _ if io.to_string().contains("lookup") => AttemptFailure::Connect,
            _ => AttemptFailure::Protocol,
        },
        _ => AttemptFailure::Protocol,
    }
}

/// ureq's refusal of a response head with more header fields than it parses (128, ureq-proto's
/// `MAX_RESPONSE_HEADERS`; ureq does not export the error type, so it is known by its text).
fn too_many_fields(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("too many headers")
}

/// What went wrong, in an operator's words.
pub fn cause(e: &ureq::Error) -> String {
    use io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => "timed out connecting".into(),
        ureq::Error::Timeout(_) => "timed out waiting for the response".into(),
        ureq::Error::HostNotFound => "the name does not resolve".into(),
        ureq::Error::LargeResponseHeader(..) => format!(
            "response head over {} KiB (sluice's limit; not counted against the breaker)",
            RESPONSE_HEAD_MAX / 1024
        ),
        ureq::Error::Protocol(p) if too_many_fields(p) => {
            "response head with over 128 header fields (sluice's limit; not counted against the breaker)".into()
        }
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused => "connection refused".into(),
            K::HostUnreachable | K::NetworkUnreachable => "unreachable".into(),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                "the connection was reset".into()
            }
            K::UnexpectedEof => "closed the connection without a complete response".into(),
            K::TimedOut | K::WouldBlock => "timed out".into(),
            _ if io.to_string().contains("lookup") => format!("the name does not resolve ({io})"),
            _ => io.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_separates_nothing_sent_from_sent() {
        let io = |k| ureq::Error::Io(io::Error::from(k));
        assert_eq!(
            classify(&io(io::ErrorKind::ConnectionRefused)),
            AttemptFailure::Connect
        );
        assert_eq!(
            classify(&ureq::Error::Timeout(Timeout::Connect)),
            AttemptFailure::ConnectTimeout
        );
        assert_eq!(
            classify(&io(io::ErrorKind::ConnectionReset)),
            AttemptFailure::Reset
        );
        assert_eq!(
            classify(&io(io::ErrorKind::UnexpectedEof)),
            AttemptFailure::Reset
        );
        assert_eq!(
            classify(&ureq::Error::Timeout(Timeout::RecvResponse)),
            AttemptFailure::Timeout
        );
    }

    #[test]
    fn a_head_over_the_limit_is_its_own_failure() {
        let e = ureq::Error::LargeResponseHeader(70_000, RESPONSE_HEAD_MAX);
        assert_eq!(classify(&e), AttemptFailure::HeadTooLarge);
        assert!(
            cause(&e).starts_with("response head over 64 KiB"),
            "{}",
            cause(&e)
        );
    }

    #[test]
    fn the_cause_says_what_an_operator_must_fix() {
        let lookup =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert!(cause(&ureq::Error::Io(lookup)).starts_with("the name does not resolve"));
        let refused = ureq::Error::Io(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(cause(&refused), "connection refused");
        assert_eq!(
            cause(&ureq::Error::Timeout(Timeout::Connect)),
            "timed out connecting"
        );
    }
}
