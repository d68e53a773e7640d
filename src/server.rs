//! The acceptor: one thread that never dies. It caps client connections (503
//! `too_many_connections` beyond `max_connections`), survives `accept()` errors such as EMFILE
//! by pausing and retrying, and starts one small-stack thread per connection.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::connection;
use crate::headers::new_request_id;
use crate::http::write;
use crate::metrics::Outcome;
use crate::reason::Reason;
use crate::state::Shared;

/// Stack of each connection thread: enough for parsing and admin rendering, small enough that
/// thousands of idle keep-alive connections stay cheap.
const CONNECTION_STACK: usize = 128 * 1024;

pub fn spawn_acceptor(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-acceptor".into())
        .spawn(move || accept_loop(&shared, &listener))
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = listener.accept();
        if shared.draining() {
            return; // dropping the listener refuses new connections
        }
        match accepted {
            Ok((stream, peer)) => {
                let max = shared.config().max_connections;
                let open = shared.metrics.client_connections.fetch_add(1, Relaxed);
                if open as usize >= max {
                    shared.metrics.client_connections.fetch_sub(1, Relaxed);
                    refuse(shared, stream);
                    continue;
                }
                let s = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("sluice-conn".into())
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || {
                        let _open = OpenConnection(&s);
                        connection::serve(&s, stream, peer);
                    });
                if let Err(e) = spawned {
                    shared.metrics.client_connections.fetch_sub(1, Relaxed);
                    log_rarely(
                        &mut last_error_log,
                        &format!("cannot start a connection thread: {e}"),
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS/ECONNABORTED…: keep accepting; pause so that a full fd
                // table does not spin the CPU while connections finish and free descriptors.
                log_rarely(&mut last_error_log, &format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Counts a connection in `client_connections` for as long as its thread runs.
struct OpenConnection<'a>(&'a Shared);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metrics.client_connections.fetch_sub(1, Relaxed);
    }
}

/// Over the connection cap: a best-effort 503 without blocking the acceptor, then close.
fn refuse(shared: &Shared, stream: TcpStream) {
    let started = Instant::now();
    let bytes = write::error_response(
        Reason::TooManyConnections,
        &new_request_id(),
        None,
        true,
        false,
    );
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(&bytes);
    shared.metrics.record(
        Outcome::Sluice(Reason::TooManyConnections),
        started.elapsed(),
    );
}

fn log_rarely(last: &mut Option<Instant>, message: &str) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        crate::warn!("{message}");
        *last = Some(Instant::now());
    }
}
