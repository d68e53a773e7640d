//! The one vocabulary for how a request ends (HAProxy's termination states, Envoy's response
//! flags): the same word in the error body, the `X-Sluice-Error` header, the access log and the
//! metrics label — and who caused each (`Origin`). README "Responses sluice makes itself" is the
//! table this mirrors.

/// Who caused a request to end the way it did (`outcome.rs` classifies with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A malformed, unencodable or abandoned request: never held against the upstream.
    Client,
    /// sluice's own refusal (queue, breaker, shutdown, connection cap).
    Sluice,
    /// The upstream answered, failed or timed out.
    Upstream,
}

/// Why sluice answered a request itself (or could not answer it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    QueueFull,
    QueueTimeout,
    CircuitOpen,
    Shutdown,
    TooManyConnections,
    ConnectFailed,
    UpstreamError,
    ConnectTimeout,
    UpstreamTimeout,
    BadRequest,
    HeaderTimeout,
    BodyTimeout,
    BodyTooLarge,
    UriTooLong,
    HeadersTooLarge,
    UpgradeUnsupported,
    ClientLimit,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::CircuitOpen,
        Reason::Shutdown,
        Reason::TooManyConnections,
        Reason::ConnectFailed,
        Reason::UpstreamError,
        Reason::ConnectTimeout,
        Reason::UpstreamTimeout,
        Reason::BadRequest,
        Reason::HeaderTimeout,
        Reason::BodyTimeout,
        Reason::BodyTooLarge,
        Reason::UriTooLong,
        Reason::HeadersTooLarge,
        Reason::UpgradeUnsupported,
        Reason::ClientLimit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::CircuitOpen => "circuit_open",
            Reason::Shutdown => "shutdown",
            Reason::TooManyConnections => "too_many_connections",
            Reason::ConnectFailed => "connect_failed",
            Reason::UpstreamError => "upstream_error",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::BadRequest => "bad_request",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::UriTooLong => "uri_too_long",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::UpgradeUnsupported => "upgrade_unsupported",
            Reason::ClientLimit => "client_limit",
        }
    }

    /// Who caused a request to end with this reason (`outcome.rs` builds on it).
    pub fn origin(self) -> Origin {
        match self {
            Reason::QueueFull
            | Reason::QueueTimeout
            | Reason::CircuitOpen
            | Reason::Shutdown
            | Reason::TooManyConnections
            | Reason::ClientLimit => Origin::Sluice,
            Reason::ConnectFailed
            | Reason::UpstreamError
            | Reason::ConnectTimeout
            | Reason::UpstreamTimeout => Origin::Upstream,
            Reason::BadRequest
            | Reason::HeaderTimeout
            | Reason::BodyTimeout
            | Reason::BodyTooLarge
            | Reason::UriTooLong
            | Reason::HeadersTooLarge
            | Reason::UpgradeUnsupported => Origin::Client,
        }
    }

    /// True if sluice closes the connection after answering with this reason, whatever the
    /// client asked for.
    pub fn closes_connection(self) -> bool {
        matches!(self, Reason::Shutdown | Reason::TooManyConnections)
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::QueueFull
            | Reason::QueueTimeout
            | Reason::CircuitOpen
            | Reason::Shutdown
            | Reason::TooManyConnections => 503,
            Reason::ConnectFailed | Reason::UpstreamError => 502,
            Reason::ConnectTimeout | Reason::UpstreamTimeout => 504,
            Reason::BadRequest => 400,
            Reason::HeaderTimeout | Reason::BodyTimeout => 408,
            Reason::BodyTooLarge => 413,
            Reason::UriTooLong => 414,
            Reason::HeadersTooLarge => 431,
            Reason::UpgradeUnsupported => 501,
            Reason::ClientLimit => 429,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Reason::QueueFull => "all workers are busy and the queue is full; retry later",
            Reason::QueueTimeout => "the request waited too long in the queue for a worker",
            Reason::CircuitOpen => "the upstream is failing; the circuit breaker is open",
            Reason::Shutdown => {
                "sluice shut down (its shutdown_grace ended) before this request was answered"
            }
            Reason::TooManyConnections => "too many client connections",
            Reason::ConnectFailed => "could not connect to the upstream",
            Reason::UpstreamError => {
                "the upstream closed or broke the connection, or sent a malformed response"
            }
            Reason::ConnectTimeout => "timed out connecting to the upstream",
            Reason::UpstreamTimeout => "timed out waiting for the upstream",
            Reason::BadRequest => "malformed request",
            Reason::HeaderTimeout => "the request head did not arrive in time",
            Reason::BodyTimeout => "the request body did not arrive in time, or too slowly",
            Reason::BodyTooLarge => "request body too large",
            Reason::UriTooLong => "request line too long",
            Reason::HeadersTooLarge => "request head too large",
            Reason::UpgradeUnsupported => {
                "sluice does not tunnel protocol upgrades (WebSocket); send plain HTTP requests"
            }
            Reason::ClientLimit => {
                "this client group has max_client_requests in workers and queue; retry later"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_word_and_an_error_status() {
        let mut words: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        words.sort();
        words.dedup();
        assert_eq!(words.len(), Reason::ALL.len());
        assert!(Reason::ALL.iter().all(|r| r.status() >= 400));
    }
}
