//! The TCP transport of the upstream agent: what ureq's own does (connect under the connect
//! timeout, Nagle off, reads and writes under ureq's timeouts, EINTR retried) with a cheaper
//! liveness probe, and sluice's idle pool beneath ureq (docs/ARCHITECTURE.md "The upstream
//! client"). ureq asks `is_open` only when it would pool a connection; sluice answers "not
//! open" (no syscall), so ureq drops it at once without touching its own pool or its lock, and
//! a connection dropped in that state goes to sluice's idle set (`pool.rs`; `Drop`): the
//! worker's own slot, from which the connector takes it first before it connects. The probe,
//! one `recv(MSG_PEEK | MSG_DONTWAIT)`, runs when a connection is taken, before any request is
//! written. Socket timeouts are set only when they change by more than 1 % (ureq's read timeout
//! is the time left, so it changes on every request); see `keep_close`. The connect is sluice's
//! own (non-blocking, then a wait) so that the socket is attached to the worker's current
//! attempt while it connects; before each socket operation the connection attaches itself to
//! the current attempt, and whenever ureq asks whether it is fit for the pool it detaches, so a
//! client's hang-up can cancel its own attempt and never another's (`cancel.rs`). Its buffers
//! are held only while used (`buffers.rs`). A `ReadBy` ends every read of the worker thread by
//! an instant (a retried 502–504 read whole within the request's deadline).
//! An https upstream's connections (TLS above this transport) stay in ureq's own pool: for
//! them the first ask is answered "open", and a second, when one is taken, reads the socket.
//! Its socket is a `MarkedStream`: every connect,
//! read and write is marked as a call that may block (`runnable.rs`).

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use ureq::{Error, Timeout};

use super::buffers::{SlimBuffers, INPUT_MAX, RESPONSE_HEAD_MAX};
use super::cancel::{attach_current, Line};
use super::pool::{IdleSet, Own, Wire};
use crate::runnable::MarkedStream;

/// Opens plain TCP connections for the agent (TLS, when the upstream is https, is chained after),
/// or hands out an idle one from sluice's pool (`pool.rs`) when it has one.
#[derive(Debug, Default)]
pub struct UpstreamTcp {
    /// sluice's idle connections (plain http only: ureq keeps TLS sessions in its own pool).
    idle: Option<Arc<IdleSet<Idle>>>,
}

/// An idle connection in sluice's pool: its socket and the socket timeouts set on it.
pub struct Idle {
    line: Arc<Line>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl UpstreamTcp {
    /// A connector with sluice's idle pool: at most `max` idle connections, none older than
    /// `timeout`.
    pub fn pooled(max: usize, timeout: Duration) -> Self {
        UpstreamTcp {
            idle: Some(Arc::new(IdleSet::new(max, timeout))),
        }
    }

    /// The most recently used idle connection that is still open, if any. Each one taken is
    /// probed (outside the set's lock); a closed one, or one too old, is closed.
    fn reuse(&self, idle: &Arc<IdleSet<Idle>>, output_size: usize) -> Option<TcpConn> {
        let mut closed = Vec::new();
        loop {
            let taken = OWN
                .try_with(|own| idle.take(own, Instant::now(), &mut closed))
                .ok()
                .flatten();
            drop(std::mem::take(&mut closed)); // closes them, outside the lock
            let taken = taken?;
            if !probe(taken.line.stream().socket()) {
                continue;
            }
            Wire::update(|w| w.reused = true);
            return Some(TcpConn {
                line: taken.line,
                buffers: SlimBuffers::new(INPUT_MAX, output_size),
                read_timeout: taken.read_timeout,
                write_timeout: taken.write_timeout,
                attached: 0,
                asked: false,
                reusable: false,
                home: Arc::downgrade(idle),
            });
        }
    }
}

impl Connector<()> for UpstreamTcp {
    type Out = TcpConn;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<TcpConn>, Error> {
        let fresh = Wire::take_fresh();
        if let Some(idle) = self.idle.as_ref().filter(|_| !fresh) {
            if let Some(conn) = self.reuse(idle, details.config.output_buffer_size()) {
                return Ok(Some(conn));
            }
        }
        let timeout = details.timeout.not_zero().map(|t| *t);
        let mut last = None;
        for addr in details.addrs.iter() {
            match connect(addr, timeout) {
                Ok((line, attached)) => {
                    if details.config.no_delay() {
                        line.stream().socket().set_nodelay(true)?;
                    }
                    let buffers = SlimBuffers::new(INPUT_MAX, details.config.output_buffer_size());
                    let conn = TcpConn {
                        line,
                        buffers,
                        read_timeout: None,
                        write_timeout: None,
                        attached,
                        asked: false,
                        reusable: false,
                        home: self.idle.as_ref().map_or_else(Weak::new, Arc::downgrade),
                    };
                    // Not registered for ureq's agent-wide shutdown, which sluice never calls: the
                    // registry is a list ureq's pool scans under its lock on every request.
                    return Ok(Some(conn));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    last = Some(Error::Timeout(Timeout::Connect));
                }
                Err(e) => last = Some(Error::Io(e)),
            }
        }
        Err(last.unwrap_or_else(|| Error::Io(io::ErrorKind::ConnectionRefused.into())))
    }
}

/// Connects to `addr` within `timeout`, the socket attached to the worker's current attempt
/// from the moment its SYN is out: a hang-up shuts it down, which ends the wait at once
/// (`cancel.rs`). Returns the socket, in blocking mode, and the attempt it is attached to.
fn connect(addr: &SocketAddr, timeout: Option<Duration>) -> io::Result<(Arc<Line>, u64)> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    let started = match socket.connect(&(*addr).into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Err(()),
        Err(e) => return Err(e),
    };
    let line = Arc::new(Line::new(MarkedStream::new(TcpStream::from(socket))));
    let mut attached = 0;
    attach_current(&line, &mut attached);
    if started.is_err() {
        line.stream().await_connected(timeout)?;
    }
    line.stream().socket().set_nonblocking(false)?;
    Ok((line, attached))
}

pub struct TcpConn {
    /// The socket, shared (weakly) with a client's `Cancel`.
    line: Arc<Line>,
    buffers: SlimBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The attempt this socket was last attached to for cancellation (0: none since it was
    /// last between requests).
    attached: u64,
    /// ureq asked `is_open` with no read or write since: the next ask reads the socket.
    asked: bool,
    /// ureq's last ask was answered "open", with no read or write since. ureq asks only when
    /// it would pool the connection (the response read to its end, the connection keep-alive):
    /// dropped in that state, the connection goes back to `home` (`Drop`).
    reusable: bool,
    /// sluice's idle set this connection goes back to (none: it is closed when dropped).
    home: Weak<IdleSet<Idle>>,
}

/// ureq drops a transport it would have pooled right after asking `is_open` (its own idle pool
/// is size 0 when sluice's is used): such a connection goes to sluice's idle set. Any other
/// drop — an error, a response not read to its end, `Connection: close` — closes it.
impl Drop for TcpConn {
    fn drop(&mut self) {
        if !self.reusable {
            return;
        }
        if let Some(home) = self.home.upgrade() {
            let idle = Idle {
                line: self.line.clone(),
                read_timeout: self.read_timeout,
                write_timeout: self.write_timeout,
            };
            let (now, mut closed) = (Instant::now(), Vec::new());
            // The worker thread keeps it for its next request (a thread that is ending, whose
            // slot is gone, closes it).
            let _ = OWN.try_with(|own| home.put(own, idle, now, &mut closed));
        }
    }
}

thread_local! {
    /// The idle connection this thread used last, for its next request (`pool.rs`).
    static OWN: Own<Idle> = const { Own::new() };
}

/// The worker thread goes to sleep on the queue: the idle connection it kept goes to the shared
/// set, where the other workers find it (docs/ARCHITECTURE.md "The upstream client").
pub fn give_back_idle() {
    let _ = OWN.try_with(Own::give_back);
}

/// True if nothing can be read from `stream` and it is not closed: no byte the upstream sent
/// unasked, no end of stream. One `recv(MSG_PEEK | MSG_DONTWAIT)`.
fn probe(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    match SockRef::from(stream).recv_with_flags(&mut probe, flags) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false, // data (garbage) or 0 (closed)
    }
}

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn")
            .field("peer", &self.line.stream().socket().peer_addr().ok())
            .finish()
    }
}

/// The socket timeout for what is left of `timeout`: `Err` if nothing is left.
fn left(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

thread_local! {
    static READ_BY: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// While it lives, every read the worker thread makes on an upstream connection ends by its
/// instant: a read that would wait past it times out (ureq's timeouts bound each read, not a
/// body as a whole). Used for a retried 502–504 read whole within the request's one deadline
/// (`attempt.rs`, README "One deadline per request").
pub struct ReadBy(Option<Instant>);

impl ReadBy {
    pub fn until(by: Instant) -> ReadBy {
        ReadBy(READ_BY.with(|r| r.replace(Some(by))))
    }
}

impl Drop for ReadBy {
    fn drop(&mut self) {
        READ_BY.with(|r| r.set(self.0));
    }
}

/// `want` (a read's socket timeout) cut to what is left until the thread's `ReadBy`, if any:
/// `Err` if nothing is left.
fn read_by(want: Option<Duration>, reason: Timeout) -> Result<Option<Duration>, Error> {
    let Some(by) = READ_BY.with(Cell::get) else {
        return Ok(want);
    };
    let rest = by.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        return Err(Error::Timeout(reason));
    }
    Ok(Some(want.map_or(rest, |w| w.min(rest))))
}

/// Sets a socket timeout unless the one set already lies between `want` and 1 % above it. A new
/// value is set 0.5 % above `want`, so the next requests' slightly different wants still fit and
/// cost no syscall. A timeout may fire up to 1 % late, never early.
fn keep_close(
    current: &mut Option<Duration>,
    want: Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let fits = match (*current, want) {
        (Some(c), Some(w)) => c >= w && c - w <= w / 100,
        (c, w) => c == w,
    };
    if !fits {
        let value = want.map(|w| w + w / 200);
        set(value)?;
        *current = value;
    }
    Ok(())
}

fn timed_out(e: io::Error, reason: Timeout) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(reason),
        _ => Error::Io(e),
    }
}

impl Transport for TcpConn {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.asked = false;
        self.reusable = false;
        Wire::update(|w| w.wrote = true); // before the write: a failed one may have sent part
        attach_current(&self.line, &mut self.attached);
        let timeout = timeout.for_write();
        let want = left(timeout)?;
        let sock = self.line.stream().socket();
        keep_close(&mut self.write_timeout, want, |t| sock.set_write_timeout(t))?;
        let output = &self.buffers.output()[..amount];
        self.line
            .stream()
            .write_all(output)
            .map_err(|e| timed_out(e, timeout.reason))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.asked = false;
        self.reusable = false;
        // What was written is sent: the output buffer is not needed while the response comes.
        self.buffers.release_output();
        attach_current(&self.line, &mut self.attached);
        let timeout = timeout.for_read();
        let want = read_by(left(timeout)?, timeout.reason)?;
        let sock = self.line.stream().socket();
        keep_close(&mut self.read_timeout, want, |t| sock.set_read_timeout(t))?;
        let input = self.buffers.input_append_buf();
        if input.is_empty() {
            // The buffer is at its largest and full of bytes ureq could not use: a body is
            // consumed as it is read, so this is a response head longer than the buffer.
            let held = self.buffers.input().len();
            return Err(Error::LargeResponseHeader(held + 1, RESPONSE_HEAD_MAX));
        }
        let n = loop {
            match self.line.stream().read(input) {
                // Linux does not restart a socket read with a timeout after a signal.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| timed_out(e, timeout.reason))?,
            }
        };
        self.buffers.input_appended(n);
        if n > 0 {
            Wire::update(|w| w.received = true);
        }
        Ok(n > 0)
    }

    /// Open means: nothing to read and no end of stream. Any byte the upstream sent unasked, or
    /// its close, makes the connection unfit for another request. ureq asks when a response
    /// is read to its end on a keep-alive connection with no unread input — the moment it
    /// would put the connection into its pool — and, for an https upstream (whose TLS sessions
    /// stay in ureq's pool), again when it takes one out, with no I/O between: the first ask
    /// is answered without a syscall, the second (before a request is written) reads the socket.
    ///
    /// A connection of sluice's pool (plain http) is answered "not open" at that first ask:
    /// ureq then drops it at once, without taking its pool's lock (it would only have dropped
    /// it under that lock, its pool holding none), and the drop puts it into sluice's idle set
    /// (`reusable`, `Drop`).
    fn is_open(&mut self) -> bool {
        // Between two requests: no client's hang-up may reach this socket until an attempt
        // uses it again (`cancel.rs`).
        self.line.detach();
        self.attached = 0;
        let open = if !std::mem::replace(&mut self.asked, true) {
            // Going back to the pool: an idle connection holds no buffers.
            self.buffers.release();
            true
        } else {
            probe(self.line.stream().socket())
        };
        self.reusable = open;
        let sluices = self.home.strong_count() > 0;
        open && !sluices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_set_again_only_when_it_would_fire_early_or_over_one_percent_late() {
        let secs = Duration::from_secs;
        let mut current = None;
        let mut sets = Vec::new();
        for want in [
            Some(secs(300)),                      // set to 301.5 s
            Some(Duration::from_millis(299_990)), // fits
            Some(Duration::from_millis(300_010)), // fits
            Some(secs(302)),                      // 301.5 would fire early: set
            Some(secs(200)),                      // 303.5 is over 1 % late: set
            None,                                 // no timeout: set
            None,                                 // fits
        ] {
            keep_close(&mut current, want, |t| {
                sets.push(t);
                Ok(())
            })
            .unwrap();
        }
        let ms = Duration::from_millis;
        assert_eq!(
            sets,
            [
                Some(ms(301_500)),
                Some(ms(303_510)),
                Some(ms(201_000)),
                None
            ]
        );
    }
}
