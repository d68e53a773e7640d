//! The front end: one thread running an event loop (mio, i.e. epoll). It accepts client
//! connections (capped at `max_connections`; an `accept()` error such as EMFILE pauses accepting,
//! never ends it), reads request heads from every connection that has no request in a worker —
//! without blocking, so an idle or slow client costs a socket, not a thread — and answers what
//! needs no worker: admin paths, `OPTIONS *`, bad heads (400/408/414/431), a drain whose grace
//! ended, an open breaker, a full queue, a request whose time in the queue ran out. Draining, it
//! closes the listener and every idle kept-alive connection; when the grace ends, it cuts what
//! is still in flight (`cut_all`). Every other request goes onto the bounded queue for the
//! worker pool; a worker hands a kept-alive connection back.
//!
//! Deadlines (idle, header, queue, a stalled answer) are checked every `TICK`, and a request
//! left waiting while a worker sleeps wakes one.
//!
//! Here: the loop, accepting, reading heads, deadlines. The connection table and the
//! non-blocking writer are in `conns.rs`, the answers given without a worker in `local.rs`,
//! the admin endpoints in `admin.rs`, the dashboard page in `dashboard.rs`.

mod admin;
mod conns;
mod dashboard;
mod local;

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::http::conn::{BodyPoll, ClientConn, HeadPoll};
use crate::http::parse::HeadError;
use crate::policy::reason::Reason;
use crate::pool::handoff::{token_key, Back, Client, Job, Parked};
use crate::pool::queue::Queue;
use crate::pool::slot::Slot;
use crate::state::Shared;
use crate::upstream::cancel::Cancel;
use conns::Entry;

const LISTENER: Token = Token(usize::MAX);
const WAKE: Token = Token(usize::MAX - 1);
/// How often deadlines are checked: the most a timeout can be late by.
const TICK: Duration = Duration::from_millis(20);
/// Requests one connection may have handled per turn of the loop; then the loop serves the
/// others, accepts and checks its timers before that connection's next turn. A client that
/// pipelines requests sluice answers itself cannot hold the loop.
const TURN: usize = 16;
/// How long accepting pauses after an `accept()` error (EMFILE: wait for descriptors to free).
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// What the front end keeps of a connection while a worker has it.
struct Away {
    stirred: Arc<AtomicBool>,
    cancel: Arc<Cancel>,
    /// The connection's epoll token (`Client::token`).
    token: usize,
}

pub struct Front {
    shared: Arc<Shared>,
    poll: Poll,
    listener: Option<TcpListener>,
    /// Indexed by file descriptor: the connections the front end holds now.
    entries: Vec<Option<Entry>>,
    /// Indexed by file descriptor: the connections a worker has now (their `stirred` flag, and
    /// how to cancel their upstream exchange if the client hangs up).
    away: Vec<Option<Away>>,
    returns: Receiver<Client>,
    back: Back,
    /// The job queue the workers drain.
    queue: Arc<Queue<Job>>,
    /// Queued requests and when their queue time runs out, oldest first.
    queued: VecDeque<(Instant, Arc<Slot<Parked>>)>,
    accept_paused_until: Option<Instant>,
    last_error_log: Option<Instant>,
    /// Connections whose turn ended with requests possibly left to read: served next turn.
    more: Vec<usize>,
    /// Accepting stopped at its share this turn with connections possibly still waiting.
    accept_more: bool,
    /// The drain's grace ended and what was still in flight has been cut.
    cut: bool,
}

impl Front {
    /// Sets up the event loop on `listener`; `Back` is what workers hand connections back with.
    pub fn new(
        shared: Arc<Shared>,
        queue: Arc<Queue<Job>>,
        listener: TcpListener,
    ) -> io::Result<(Front, Back)> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let (tx, returns) = crossbeam_channel::unbounded();
        let back = Back::new(tx, waker, poll.registry().try_clone()?);
        let front = Front {
            shared,
            poll,
            listener: Some(listener),
            entries: Vec::new(),
            away: Vec::new(),
            returns,
            back: back.clone(),
            queue,
            queued: VecDeque::new(),
            accept_paused_until: None,
            last_error_log: None,
            more: Vec::new(),
            accept_more: false,
            cut: false,
        };
        Ok((front, back))
    }

    /// Runs the loop on its own thread. Should the loop itself ever fail (a bug outside any one
    /// connection's handling), the process exits with status 70 rather than live on without
    /// serving anyone, so that a supervisor restarts it.
    pub fn spawn(self) -> io::Result<JoinHandle<()>> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("sluice-front".into())
            .spawn(move || {
                let ran = catch_unwind(AssertUnwindSafe(|| self.run()));
                if ran.is_err() || !shared.stopping() {
                    crate::error!("the front end stopped; exiting so that sluice is restarted");
                    crate::observe::log::flush(std::time::Duration::from_secs(1));
                    std::process::exit(70);
                }
            })
    }

    fn run(mut self) {
        let shared = self.shared.clone();
        let mut events = Events::with_capacity(512);
        let mut next_tick = Instant::now() + TICK;
        while !self.shared.stopping() {
            if self.shared.draining() && self.listener.is_some() {
                self.close_listener();
                guarded(&shared, || self.close_idle());
            }
            if self.shared.grace_over() && !self.cut {
                self.cut = true;
                guarded(&shared, || self.cut_all());
            }
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(t) = self.accept_paused_until {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            self.back.asleep.store(true, SeqCst);
            fence(SeqCst);
            if !self.returns.is_empty() || !self.more.is_empty() || self.accept_more {
                timeout = Duration::ZERO;
            }
            let polled = self.poll.poll(&mut events, Some(timeout));
            self.back.asleep.store(false, SeqCst);
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.log_rarely(&format!("poll failed: {e}"));
                    std::thread::sleep(ACCEPT_PAUSE);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => {
                        guarded(&shared, || self.accept());
                    }
                    WAKE => {}
                    Token(token) => {
                        let key = token_key(token);
                        if self.token_of(key) != Some(token) {
                            continue; // for a connection closed since: its descriptor is reused
                        }
                        // A socket watched for hang-ups only (a worker keeps it, `pool/keep.rs`)
                        // reports nothing else: an event neither readable nor writable is one.
                        let gone = ev.is_read_closed()
                            || ev.is_error()
                            || !(ev.is_readable() || ev.is_writable());
                        if !guarded(&shared, || self.ready(key, gone)) {
                            self.close(key);
                        }
                    }
                }
            }
            guarded(&shared, || self.take_returns());
            for key in std::mem::take(&mut self.more) {
                if !guarded(&shared, || self.advance(key)) {
                    self.close(key);
                }
            }
            if std::mem::take(&mut self.accept_more) {
                guarded(&shared, || self.accept());
            }
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                guarded(&shared, || self.accept());
            }
            if now >= next_tick {
                guarded(&shared, || self.tick(now));
                next_tick = now + TICK;
            }
        }
    }

    /// Draining: new connections are refused by the kernel from here on.
    fn close_listener(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&l.as_raw_fd()));
        }
        self.back.listening.store(false, SeqCst);
    }

    /// The drain's grace is over: every request still here or in a worker ends now with outcome
    /// `shutdown` — a queued one, or one whose body is still coming, is answered 503 `shutdown`;
    /// a worker's exchange is cancelled (`Cancel::shutdown`, which also ends its read of a
    /// request body), and the worker answers 503 `shutdown` if nothing was sent to its client
    /// yet, else closes the connection; an answer still being sent to a slow reader is cut
    /// (README "Shutdown").
    fn cut_all(&mut self) {
        // First, so that the 503s below are not among them.
        let cut = self.cut_deliveries();
        if cut > 0 {
            crate::warn!("shutdown_grace over: {cut} response(s) still being sent cut short");
        }
        for (_, slot) in std::mem::take(&mut self.queued) {
            if let Some(parked) = slot.take() {
                let waited = parked.started.elapsed();
                self.answer_parked(parked, Reason::Shutdown, waited);
            }
        }
        for away in self.away.iter().flatten() {
            away.cancel.shutdown();
        }
        for key in 0..self.entries.len() {
            if self.entries[key]
                .as_ref()
                .is_some_and(|e| e.body_wait.is_some())
            {
                self.refuse_body(key, Reason::Shutdown);
            }
        }
    }

    /// Accepts at most `TURN` × 4 connections a turn: a flood of new connections is taken in
    /// as fast as it is served, not all at once (which would fill `max_connections` with
    /// connections not yet read).
    fn accept(&mut self) {
        for _ in 0..TURN * 4 {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.open(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS…: pause, so that a full descriptor table does not spin
                    // the CPU, then accept again (the kernel keeps the waiting connections).
                    self.log_rarely(&format!("accept failed: {e}"));
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
        self.accept_more = true;
    }

    fn open(&mut self, stream: TcpStream, peer: SocketAddr) {
        let cfg = self.shared.config();
        let io = ClientConn::new(stream, peer, cfg.client_idle_timeout);
        let (client, open) = Client::open(io, &self.shared);
        if open as usize >= cfg.max_connections {
            return local::refuse_connection(&self.shared, client);
        }
        let (key, token) = (client.key(), client.token());
        // The socket stays in blocking mode: the front end's reads and writes pass
        // `MSG_DONTWAIT` (`http::conn::recv_now`, `try_send`), a worker's block.
        let registered = self
            .poll
            .registry()
            .register(
                &mut SourceFd(&client.io.stream().as_raw_fd()),
                Token(token),
                Interest::READABLE,
            )
            .is_ok();
        if registered {
            self.insert(key, Entry::waiting(client, &cfg, true));
            // A client usually sends its request at once: read it now, not a turn later.
            self.advance(key);
        }
    }

    /// The socket is readable or writable (or closed, `gone`): go on with what the connection
    /// was doing. A worker's connection is only marked; a hang-up cancels its request.
    fn ready(&mut self, key: usize, gone: bool) {
        let Some(e) = self.entry(key) else {
            if let Some(away) = self.away.get(key).and_then(Option::as_ref) {
                away.stirred.store(true, SeqCst); // its worker wakes us when handing it back
                if gone && self.shared.config().abort_on_client_close {
                    away.cancel.client_gone();
                }
            }
            return;
        };
        if e.lingering {
            self.linger(key);
        } else if e.out.is_empty() {
            self.advance(key);
        } else {
            self.flush(key);
        }
    }

    fn take_returns(&mut self) {
        if self.returns.is_empty() {
            return;
        }
        let cfg = self.shared.config();
        while let Ok(client) = self.returns.try_recv() {
            let key = client.key();
            // Bytes to read now: buffered already (pipelined, or a head a worker put back), or
            // the socket stirred while a worker had it (that event was spent). Otherwise the
            // next request raises its own event: no read that would find nothing.
            let ready = client.io.has_buffered() || client.stirred.load(SeqCst);
            let entry = Entry::waiting(client, &cfg, false);
            let unsent = !entry.out.is_empty() || entry.close_after;
            self.insert(key, entry);
            if unsent {
                self.interest(key, Interest::READABLE | Interest::WRITABLE);
                self.flush(key);
            } else if !self.close_if_idle(key) && ready {
                self.advance(key);
            }
        }
    }

    /// Reads and handles request heads until the socket has no more, the connection leaves, or
    /// its turn (`TURN` requests) is over.
    fn advance(&mut self, key: usize) {
        let cfg = self.shared.config();
        for _ in 0..TURN {
            let Some(e) = self.entry(key) else {
                return;
            };
            if !e.out.is_empty() {
                return;
            }
            if let Some(p) = e.body_wait.take() {
                match e.client.io.poll_body(p.head.framing, cfg.client_buffer) {
                    BodyPoll::Pending => {
                        e.body_wait = Some(p);
                        return;
                    }
                    BodyPoll::Closed => return self.abandoned(key, p),
                    BodyPoll::Complete | BodyPoll::Stream => {
                        if !self.dispatch(key, p, &cfg) {
                            return;
                        }
                        continue;
                    }
                }
            }
            match e.client.io.poll_head(cfg.max_header_bytes) {
                HeadPoll::Pending => {
                    if !e.head_begun && e.client.io.has_buffered() {
                        e.head_begun = true;
                        e.deadline = Instant::now() + cfg.client_header_timeout;
                    }
                    return;
                }
                HeadPoll::Closed => return self.close(key),
                HeadPoll::Invalid(err) => {
                    crate::debug!("client={} refused request head: {err:?}", e.client.io.peer);
                    let reason = match err {
                        HeadError::Bad(_) => Reason::BadRequest,
                        HeadError::UriTooLong => Reason::UriTooLong,
                        HeadError::TooLarge => Reason::HeadersTooLarge,
                    };
                    return self.refuse_head(key, reason);
                }
                HeadPoll::Ready(head) => {
                    if !self.request(key, head, &cfg) {
                        return;
                    }
                }
            }
        }
        self.more.push(key); // its turn is over; the rest waits for the next one
    }

    /// Deadlines: queue time, idle and header timeouts, stalled answers.
    fn tick(&mut self, now: Instant) {
        // A request waiting while a worker sleeps (its runners blocked somewhere unmarked):
        // wake one (`runnable.rs`).
        self.queue.nudge();
        let mut expired = Vec::new();
        self.queued.retain(|(deadline, slot)| {
            if slot.is_taken() {
                return false;
            }
            if now < *deadline {
                return true;
            }
            expired.extend(slot.take());
            false
        });
        for parked in expired {
            let waited = parked.started.elapsed();
            self.shared.metrics.record_queue_wait(waited);
            let key = parked.client.key();
            if self.answer_parked(parked, Reason::QueueTimeout, waited) {
                self.advance(key);
            }
        }
        for key in 0..self.entries.len() {
            let Some(e) = self.entries[key].as_ref() else {
                continue;
            };
            if now < e.deadline {
                continue;
            }
            if e.body_wait.is_some() {
                self.refuse_body(key, Reason::BodyTimeout);
            } else if e.head_begun && e.out.is_empty() {
                self.refuse_head(key, Reason::HeaderTimeout);
            } else {
                self.close(key); // idle past its timeout, or not reading its answer
            }
        }
    }

    fn log_rarely(&mut self, message: &str) {
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            crate::warn!("{message}");
            self.last_error_log = Some(Instant::now());
        }
    }
}

/// Runs one step of the loop. A panic in it (a bug) costs at most the connection it concerned —
/// the caller closes it — not the loop: it is logged and counted, and the loop goes on.
fn guarded(shared: &Shared, step: impl FnOnce()) -> bool {
    if catch_unwind(AssertUnwindSafe(step)).is_ok() {
        return true;
    }
    shared.metrics.worker_panics.fetch_add(1, Relaxed);
    crate::error!("front end panicked while handling a connection; that connection was closed");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_panicking_step_is_contained_and_counted() {
        let shared = Shared::new(Config {
            target_host: "127.0.0.1".into(),
            log_level: crate::config::LogLevel::Error,
            ..Config::default()
        });
        assert!(guarded(&shared, || {}));
        assert!(!guarded(&shared, || panic!(
            "a bug in one connection's handling"
        )));
        assert!(guarded(&shared, || {}), "the next step runs as before");
        assert_eq!(shared.metrics.worker_panics.load(Relaxed), 1);
    }
}
