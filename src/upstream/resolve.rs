//! Name resolution for the agent, cached. ureq resolves the target's name on every request,
//! before it looks in its pool — one `getaddrinfo` per request even when a pooled connection is
//! then used (re-reading `/etc/hosts`, and in Kubernetes several DNS queries for a service name
//! under `ndots:5`), and a DNS outage would fail requests that need no new connection. Here the
//! addresses of the one target are kept for `FRESH`; then one request looks them up again while
//! the others go on with the ones known; if that look-up fails, the known addresses are used
//! for another `RETRY` before the next try (README "Settings", `target_host`). Each look-up's
//! outcome, and one made at start before any request, is recorded for `/proxy-health`
//! (`observe/lookup.rs`). A look-up is `MarkedLookUp`'s, marked as a call that may block
//! (`runnable.rs`).

use std::fmt;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::Error;

use crate::observe::lookup::TargetLookup;

/// How long looked-up addresses are used before they are looked up again.
pub const FRESH: Duration = Duration::from_secs(5);
/// After a failed look-up, how long the addresses known before are used before the next try.
pub const RETRY: Duration = Duration::from_secs(1);

pub struct CachedResolver {
    inner: MarkedLookUp,
    cache: Mutex<Cache>,
    lookup: Arc<TargetLookup>,
}

impl CachedResolver {
    /// `lookup`: where each look-up's outcome is recorded.
    pub fn new(lookup: Arc<TargetLookup>) -> Self {
        CachedResolver {
            inner: MarkedLookUp::default(),
            cache: Mutex::default(),
            lookup,
        }
    }
}

/// Looks `host` up once on a thread of its own (a look-up may take seconds while DNS is down;
/// start and reload do not wait for it) and records the outcome in `lookup`.
pub fn look_up_in_background(host: &str, port: u16, lookup: Arc<TargetLookup>) {
    let host = host.to_string();
    let _ = std::thread::Builder::new()
        .name("sluice-lookup".into())
        .spawn(move || {
            let result = match (host.as_str(), port).to_socket_addrs() {
                Ok(addrs) if addrs.len() > 0 => Ok(()),
                Ok(_) => Err("no address".to_string()),
                Err(e) => Err(e.to_string()),
            };
            lookup.record(&host, result);
        });
}

/// ureq's look-up (`getaddrinfo`), with the worker counted as not running while it waits.
#[derive(Debug, Default)]
struct MarkedLookUp(DefaultResolver);

impl Resolver for MarkedLookUp {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        crate::runnable::blocking(|| self.0.resolve(uri, config, timeout))
    }
}

impl fmt::Debug for CachedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResolver").finish()
    }
}

/// The addresses last looked up, for which target (scheme, authority), and until when they are
/// used as they are.
#[derive(Default)]
struct Cache {
    entry: Option<(String, String, ResolvedSocketAddrs)>,
    use_until: Option<Instant>,
}

/// A target as a request names it: compared with the cached one without allocating.
#[derive(Clone, Copy)]
struct Key<'a>(&'a str, &'a str);

/// What a request does about the target's addresses.
enum Plan {
    Use(ResolvedSocketAddrs),
    /// Look them up; `known`: what to use if that fails.
    LookUp {
        known: Option<ResolvedSocketAddrs>,
    },
}

impl Cache {
    /// One request's decision at `now`. The first request to find the addresses due for a
    /// look-up does it; the others meanwhile use the known ones (for up to `RETRY`).
    fn plan(&mut self, key: Key<'_>, now: Instant) -> Plan {
        let known = match &self.entry {
            Some((s, a, addrs)) if s == key.0 && a == key.1 => Some(addrs.clone()),
            _ => None,
        };
        match known {
            Some(addrs) if self.use_until.is_some_and(|t| now < t) => Plan::Use(addrs),
            known => {
                if known.is_some() {
                    self.use_until = Some(now + RETRY);
                }
                Plan::LookUp { known }
            }
        }
    }

    fn looked_up(&mut self, key: Key<'_>, addrs: &ResolvedSocketAddrs, now: Instant) {
        self.entry = Some((key.0.to_string(), key.1.to_string(), addrs.clone()));
        self.use_until = Some(now + FRESH);
    }
}

impl Resolver for CachedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return self.inner.resolve(uri, config, timeout);
        };
        let key = Key(scheme, authority.as_str());
        let plan = self.cache.lock().plan(key, Instant::now());
        match plan {
            Plan::Use(addrs) => Ok(addrs),
            Plan::LookUp { known } => {
                let host = uri.host().unwrap_or_default();
                match self.inner.resolve(uri, config, timeout) {
                    Ok(addrs) => {
                        self.cache.lock().looked_up(key, &addrs, Instant::now());
                        self.lookup.record(host, Ok(()));
                        Ok(addrs)
                    }
                    Err(e) => {
                        self.lookup.record(host, Err(e.to_string()));
                        if known.is_some() {
                            crate::warn!(
                                "looking up {authority} failed ({e}); using the addresses known"
                            );
                        }
                        known.ok_or(e)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const A: Key<'static> = Key("http", "a:1");
    const B: Key<'static> = Key("http", "b:1");

    fn addrs(port: u16) -> ResolvedSocketAddrs {
        let mut a = DefaultResolver::default().empty();
        a.push(SocketAddr::from(([127, 0, 0, 1], port)));
        a
    }

    fn port(p: Plan) -> Option<u16> {
        match p {
            Plan::Use(a) => Some(a[0].port()),
            Plan::LookUp { .. } => None,
        }
    }

    #[test]
    fn addresses_are_looked_up_once_per_fresh_period_by_one_request() {
        let t = Instant::now();
        let mut c = Cache::default();
        assert!(matches!(c.plan(A, t), Plan::LookUp { known: None }));
        c.looked_up(A, &addrs(1), t);
        assert_eq!(port(c.plan(A, t + FRESH / 2)), Some(1));
        // Due: the first request looks up; the others use the known ones meanwhile.
        let due = t + FRESH;
        assert!(matches!(c.plan(A, due), Plan::LookUp { known: Some(_) }));
        assert_eq!(port(c.plan(A, due)), Some(1));
        assert_eq!(port(c.plan(A, due + RETRY / 2)), Some(1));
        // That look-up failed: the next try comes after RETRY.
        assert!(matches!(
            c.plan(A, due + RETRY),
            Plan::LookUp { known: Some(_) }
        ));
        c.looked_up(A, &addrs(2), due + RETRY);
        assert_eq!(port(c.plan(A, due + RETRY)), Some(2));
    }

    #[test]
    fn a_look_up_is_marked_as_a_call_that_may_block() {
        #[derive(Default)]
        struct Blocks(std::sync::atomic::AtomicU32);
        impl crate::runnable::Runnable for Blocks {
            fn blocks(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            fn resumes(&self) {}
        }
        let blocks = std::sync::Arc::new(Blocks::default());
        crate::runnable::register(blocks.clone());
        let r = CachedResolver::new(Arc::default());
        let uri: Uri = "http://127.0.0.1:1/".parse().unwrap();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::Exact(Duration::from_secs(5)),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        let cfg = Config::default();
        r.resolve(&uri, &cfg, timeout).unwrap();
        assert_eq!(blocks.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        r.resolve(&uri, &cfg, timeout).unwrap();
        assert_eq!(
            blocks.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "cached"
        );
    }

    #[test]
    fn another_target_is_looked_up_afresh() {
        let t = Instant::now();
        let mut c = Cache::default();
        c.looked_up(A, &addrs(1), t);
        assert!(matches!(c.plan(B, t), Plan::LookUp { known: None }));
    }
}
