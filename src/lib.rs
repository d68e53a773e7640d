//! sluice: a small, fast, dependable HTTP/1.1 reverse proxy for one upstream.
//!
//! `start(Config)` binds the listener and starts the front end and the worker pool; the
//! returned `Running` reports the bound address, reloads settings, and drains or stops the
//! proxy. A request's path, which is also the layout of this crate (docs/ARCHITECTURE.md):
//!
//! ```text
//! front/ (event loop: accept, read heads, local answers, admin)
//!   → pool/ (hand-off types, bounded queue, slot, worker threads)
//!     → upstream/ (one ureq agent over sluice's transport, attempts, relay)
//! ```
//! beside `http/` (wire format), `policy/` (pure decisions), `answer.rs` (sluice's own answers),
//! `observe/` (metrics, logs), `config/` (settings), and `state.rs`, the ground floor every
//! thread shares.

// `/proxy-metrics` is one `json!` literal of more keys than the macro's default depth allows.
#![recursion_limit = "256"]

pub mod config;
pub mod http;
pub mod limits;
pub mod observe;
pub mod runnable;

mod answer;
mod front;
mod policy;
mod pool;
mod rand;
mod state;
mod upstream;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::Config;
use pool::handoff::Back;
use pool::queue::Queue;
use pool::worker::Pool;
use state::Shared;
use upstream::agent::UpstreamClient;
use upstream::health::Checker;

/// A started proxy.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    upstream: Arc<UpstreamClient>,
    front: Option<JoinHandle<()>>,
    checker: Option<Checker>,
    back: Back,
    workers: Vec<JoinHandle<()>>,
}

/// Binds `host:port` and starts serving. Port 0 picks a free port (see `Running::addr`).
pub fn start(config: Config) -> io::Result<Running> {
    let addr = (config.host.as_str(), config.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "listen address resolves to nothing",
            )
        })?;
    let listener = listen(addr)?;
    let addr = listener.local_addr()?;
    observe::log::set_level(config.log_level);
    let shared = Arc::new(Shared::new(config));
    let upstream = Arc::new(UpstreamClient::new(
        &shared.config(),
        shared.target_lookup.clone(),
    ));
    let queue = Arc::new(Queue::with_run_cap(
        shared.admission.capacity(),
        pool::worker::run_cap(),
    ));
    let (front, back) = front::Front::new(shared.clone(), queue.clone(), listener)?;
    let workers = pool::worker::spawn(&Pool {
        shared: shared.clone(),
        queue,
        upstream: upstream.clone(),
        back: back.clone(),
    });
    let front = front.spawn()?;
    let checker = Checker::spawn(shared.clone())?;
    Ok(Running {
        addr,
        shared,
        upstream,
        front: Some(front),
        checker: Some(checker),
        back,
        workers,
    })
}

/// How long the end of a drain's grace waits for the requests it cut to be answered and logged
/// (a worker writing to a client that does not read may take longer; it is not waited for).
pub const CUT_WAIT: Duration = Duration::from_secs(1);

/// Connections the kernel may hold for the acceptor (std's `bind` allows only 128; bursts of new
/// clients beyond that are dropped or reset by the kernel before sluice sees them).
const LISTEN_BACKLOG: i32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The drain's grace in the current config (a reload may have changed it).
    pub fn shutdown_grace(&self) -> Duration {
        self.shared.config().shutdown_grace
    }

    pub fn metrics(&self) -> &observe::metrics::Metrics {
        &self.shared.metrics
    }

    /// Applies a re-read config to new requests (SIGHUP). Returns the keys whose change needs
    /// a restart; those keep their running values.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.shared.config();
        let (kept, fixed) = self.shared.reconfigure(new);
        self.upstream.reconfigure(&old, &kept);
        if let Some(c) = &self.checker {
            c.wake();
        }
        fixed
    }

    /// Stops accepting (the listener closes) and closes idle kept-alive connections; health
    /// turns 503 `draining`. Requests in flight go on, and a request that still arrives on an
    /// open connection is forwarded; every answer from now on closes its connection.
    pub fn drain(&mut self) {
        self.shared.start_draining();
        self.back.wake();
        let until = Instant::now() + Duration::from_secs(2);
        while self.back.listening() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until no request is queued or in flight, no answer is still being sent (the
    /// front end's, or one a worker left it) and no closed connection is still lingering (its
    /// client's last bytes read and dropped, at most 2 s), at most `grace`. True if it got there.
    pub fn wait_idle(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        loop {
            let busy = self.shared.requests_in_progress() > 0;
            if !busy {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The drain's grace is over: every request still queued or in flight ends now with
    /// outcome `shutdown` (503 `shutdown` if nothing was sent to its client yet, else its
    /// connection closes), each with its access-log line; an answer still being sent is cut. Waits up to `CUT_WAIT` for that;
    /// returns how many requests were still in progress then.
    pub fn end_grace(&self) -> i64 {
        self.shared.end_grace();
        self.back.wake();
        self.wait_idle(CUT_WAIT);
        self.shared.requests_in_progress()
    }

    /// Drains, waits up to `grace` for in-flight requests, cuts what is left (`end_grace`),
    /// then stops the workers. True if nothing had to be cut.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.drain();
        let idle = self.wait_idle(grace);
        if !idle {
            self.end_grace();
        }
        self.shared.stop();
        self.back.wake();
        if let Some(c) = self.checker.take() {
            c.stop();
        }
        if let Some(f) = self.front.take() {
            let _ = f.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        idle
    }
}
