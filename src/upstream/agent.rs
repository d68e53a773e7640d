//! The one upstream client: a ureq agent (one connection pool) configured for a proxy, and the
//! base URI every request goes to. README "Settings" and docs/ARCHITECTURE.md "The upstream
//! client" say why each ureq default is changed. Rebuilt on SIGHUP when an upstream setting
//! changes; requests in flight keep the agent they started with.

use std::sync::Arc;

use parking_lot::RwLock;
use ureq::unversioned::transport::{Connector, RustlsConnector};
use ureq::{http, Agent};

use super::buffers::RESPONSE_HEAD_MAX;
use super::resolve::{look_up_in_background, CachedResolver};
use super::transport::UpstreamTcp;
use crate::config::Config;
use crate::observe::lookup::TargetLookup;

/// An agent and the base URI (`http://host:port`).
pub struct Upstream {
    pub agent: Agent,
    pub base: Base,
}

impl Upstream {
    /// No environment proxy, no redirects, statuses are not errors, nothing injected, any
    /// method, separate connect and read timeouts, a pool sized for the workers, the target's
    /// addresses cached (`resolve.rs`, recording each look-up in `lookup`). Idle plain-http
    /// connections are kept by sluice's own pool beneath ureq (`pool.rs`, through the
    /// transport), ureq's own idle pool set to none; an https upstream's (TLS sessions, which
    /// sluice's transport does not see) stay in ureq's. `pool_maxsize` 0 keeps none: every
    /// request connects anew.
    pub fn new(cfg: &Config, lookup: Arc<TargetLookup>) -> Self {
        let pool = cfg.pool_maxsize;
        let tls = cfg.target_base().starts_with("https:");
        let ureq_pool = if tls { pool } else { 0 };
        let config = Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent("")
            .accept("")
            .accept_encoding("")
            .allow_non_standard_methods(true)
            .no_delay(true)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_send_request(Some(cfg.read_timeout))
            .timeout_recv_response(Some(cfg.read_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .timeout_per_write(Some(cfg.read_timeout))
            .max_idle_connections(ureq_pool)
            .max_idle_connections_per_host(ureq_pool)
            .max_idle_age(cfg.pool_idle_timeout)
            .input_buffer_size(TLS_INPUT_BUFFER)
            .max_response_header_size(RESPONSE_HEAD_MAX)
            .output_buffer_size(OUTPUT_BUFFER)
            .build();
        let resolver = CachedResolver::new(lookup);
        // TLS is chained only for an https upstream: ureq boxes each connection it gets as the
        // connector's output type, and the chain's (an enum of TCP and TLS) is over 1 KiB —
        // too large for the allocator's per-thread cache, so a lock per request.
        let agent = if tls {
            let connector = UpstreamTcp::default().chain(RustlsConnector::default());
            Agent::with_parts(config, connector, resolver)
        } else {
            let connector = UpstreamTcp::pooled(pool, cfg.pool_idle_timeout);
            Agent::with_parts(config, connector, resolver)
        };
        Upstream {
            agent,
            base: Base::new(cfg.target_base()),
        }
    }
}

/// Where every upstream request goes: the base URI (`scheme://host:port`), its scheme and
/// authority parsed once — a request's URI is then its path parsed, the rest shared, not parsed
/// again per request.
pub struct Base {
    base: String,
    parts: Option<(http::uri::Scheme, http::uri::Authority)>,
}

impl Base {
    pub fn new(base: String) -> Base {
        let parts = http::Uri::try_from(base.as_str()).ok().and_then(|uri| {
            let p = uri.into_parts();
            Some((p.scheme?, p.authority?))
        });
        Base { base, parts }
    }

    /// `scheme://host:port`.
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// The URI of `path` (origin-form: path and query) at this base; `None` if it is not one.
    pub(super) fn uri(&self, path: &str) -> Option<http::Uri> {
        let Some((scheme, authority)) = &self.parts else {
            return http::Uri::try_from(format!("{}{path}", self.base)).ok();
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::try_from(path).ok()?);
        http::Uri::from_parts(parts).ok()
    }
}

/// ureq's own read buffer, used only by an https upstream's TLS layer (plain TCP reads into
/// `buffers.rs`): one byte over the head limit, so that a longer head is refused as too large
/// (ureq compares what it holds with the limit) rather than as a connection that stalled.
pub const TLS_INPUT_BUFFER: usize = RESPONSE_HEAD_MAX + 1;
/// ureq's write buffer per upstream connection: it must hold the longest request line or header
/// line (a request with a longer one is refused as the client's error, 431/414, before anything
/// is sent).
pub const OUTPUT_BUFFER: usize = 16 * 1024;

/// The current upstream client, swapped whole when a reload changes an upstream setting, and
/// where look-ups of the target's name are recorded.
pub struct UpstreamClient(RwLock<Arc<Upstream>>, Arc<TargetLookup>);

impl UpstreamClient {
    /// Also looks the target's name up once now, in the background (`/proxy-health` and a warn
    /// line say if it does not resolve, before any request needs it).
    pub fn new(cfg: &Config, lookup: Arc<TargetLookup>) -> Self {
        look_up_in_background(&cfg.target_host, cfg.target_port, lookup.clone());
        UpstreamClient(
            RwLock::new(Arc::new(Upstream::new(cfg, lookup.clone()))),
            lookup,
        )
    }

    pub fn get(&self) -> Arc<Upstream> {
        self.0.read().clone()
    }

    /// Builds a new agent if `new` changes what the agent was built from.
    pub fn reconfigure(&self, old: &Config, new: &Config) {
        let changed = new.target_base() != old.target_base()
            || new.connect_timeout != old.connect_timeout
            || new.read_timeout != old.read_timeout
            || new.pool_maxsize != old.pool_maxsize
            || new.pool_idle_timeout != old.pool_idle_timeout;
        if new.target_host != old.target_host || new.target_port != old.target_port {
            self.1.reset();
            look_up_in_background(&new.target_host, new.target_port, self.1.clone());
        }
        if changed {
            *self.0.write() = Arc::new(Upstream::new(new, self.1.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Base;
    use ureq::http;

    #[test]
    fn a_uri_from_the_parsed_base_is_the_one_parsed_whole() {
        for base in [
            "http://u:8888",
            "http://127.0.0.1:80",
            "http://[::1]:9",
            "https://h.example:443",
        ] {
            let parsed = Base::new(base.to_string());
            assert!(parsed.parts.is_some(), "{base}");
            for path in [
                "/",
                "/tiny",
                "/a?q=1&r=%7B",
                "/p/a;b,c?d=e+f&g=h#i",
                "/a b",
                "/\u{e9}",
            ] {
                let whole = http::Uri::try_from(format!("{base}{path}")).ok();
                assert_eq!(parsed.uri(path), whole, "{base}{path}");
            }
        }
    }
}
