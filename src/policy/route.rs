//! Where a request goes: sluice's own paths (the admin endpoints), `OPTIONS *` and WebSocket
//! upgrades are answered by the front end; everything else goes upstream. Asked by the front end
//! for every head it reads, and by a worker that read a kept-alive connection's next head itself
//! (docs/ARCHITECTURE.md "A worker keeps a busy connection").

use crate::http::parse::RequestHead;

pub const HEALTH: &str = "/proxy-health";
pub const METRICS: &str = "/proxy-metrics";
pub const PROMETHEUS: &str = "/proxy-metrics/prometheus";
pub const DASHBOARD: &str = "/proxy-dashboard";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One of sluice's own paths (any method; only GET and HEAD are served).
    Admin,
    /// `OPTIONS *` asks about the server itself: it cannot be sent as a URI.
    OptionsStar,
    /// A WebSocket upgrade: 501 `upgrade_unsupported`, before anything is sent.
    Upgrade,
    /// Forwarded to the upstream.
    Upstream,
}

/// The request target without its query.
pub fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

pub fn route(head: &RequestHead) -> Route {
    if matches!(
        path_only(head.path()),
        HEALTH | METRICS | PROMETHEUS | DASHBOARD
    ) {
        Route::Admin
    } else if head.path() == "*" {
        Route::OptionsStar
    } else if head.wants_websocket() {
        Route::Upgrade
    } else {
        Route::Upstream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_head;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0
    }

    #[test]
    fn admin_paths_star_and_upgrades_stay_with_sluice() {
        let r = |s| route(&head(s));
        assert_eq!(
            r("GET /proxy-health HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Admin
        );
        assert_eq!(
            r("POST /proxy-metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Admin
        );
        assert_eq!(
            r("GET /proxy-metrics/prometheus HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Admin
        );
        assert_eq!(
            r("GET /proxy-dashboard?every=5 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Admin
        );
        assert_eq!(
            r("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::OptionsStar
        );
        assert_eq!(
            r("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Route::Upgrade
        );
        assert_eq!(
            r("GET /proxy-healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Upstream
        );
        assert_eq!(
            r("GET /api HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n"),
            Route::Upstream
        );
    }
}
