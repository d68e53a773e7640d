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

pub mod config;
pub mod http;
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

/// A started proxy.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    upstream: Arc<UpstreamClient>,
    front: Option<JoinHandle<()>>,
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
    let upstream = Arc::new(UpstreamClient::new(&config));
    let shared = Arc::new(Shared::new(config));
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
    Ok(Running {
        addr,
        shared,
        upstream,
        front: Some(front),
        back,
        workers,
    })
}

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

    pub fn metrics(&self) -> &observe::metrics::Metrics {
        &self.shared.metrics
    }

    /// Applies a re-read config to new requests (SIGHUP). Returns the keys whose change needs
    /// a restart; those keep their running values.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.shared.config();
        let (kept, fixed) = self.shared.reconfigure(new);
        self.upstream.reconfigure(&old, &kept);
        fixed
    }

    /// Stops accepting; health turns 503 `draining`; new requests on open connections get 503
    /// `draining`. Requests already accepted go on.
    pub fn drain(&mut self) {
        self.shared.start_draining();
        self.back.wake();
        let until = Instant::now() + Duration::from_secs(2);
        while self.back.listening() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until no request is queued or in flight, at most `grace`. True if it got there.
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

    /// Drains, waits up to `grace` for in-flight requests, then stops the workers.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.drain();
        let idle = self.wait_idle(grace);
        self.shared.stop();
        self.back.wake();
        if let Some(f) = self.front.take() {
            let _ = f.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        idle
    }
}
