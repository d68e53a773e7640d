//! The front end: one thread running an event loop (mio, i.e. epoll). It accepts client
//! connections (capped at `max_connections`; an `accept()` error such as EMFILE pauses accepting,
//! never ends it), reads request heads from every connection that has no request in a worker —
//! without blocking, so an idle or slow client costs a socket, not a thread — and answers what
//! needs no worker: admin paths, `OPTIONS *`, bad heads (400/408/414/431), a draining sluice, an
//! open breaker, a full queue, a request whose time in the queue ran out. Every other request
//! goes onto the bounded queue for the worker pool; a worker hands a kept-alive connection back.
//!
//! Deadlines (idle, header, queue, a stalled answer) are checked every `TICK`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::access_log::{self, RequestCtx};
use crate::admin;
use crate::breaker::retry_after_secs;
use crate::config::Config;
use crate::forward::{self, Finished};
use crate::headers;
use crate::http::conn::{ClientConn, HeadPoll};
use crate::http::parse::{Framing, HeadError, RequestHead};
use crate::http::write;
use crate::metrics::Outcome;
use crate::reason::Reason;
use crate::slot::Slot;
use crate::state::Shared;
use crate::worker::{Job, Parked};

const LISTENER: Token = Token(usize::MAX);
const WAKE: Token = Token(usize::MAX - 1);
/// How often deadlines are checked: the most a timeout can be late by.
const TICK: Duration = Duration::from_millis(20);
/// How long accepting pauses after an `accept()` error (EMFILE: wait for descriptors to free).
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// A client connection, wherever it is (the front end, the queue, a worker). Counted in the
/// `client_connections` gauge until it is dropped, which closes it.
pub struct Client {
    pub io: ClientConn,
    shared: Arc<Shared>,
    /// Set by the front end when the socket stirred (readable, closed) while a worker had the
    /// connection: only then does handing it back need to wake the front end (the event that
    /// would have told it was spent). Otherwise the next request's own event wakes it.
    stirred: Arc<AtomicBool>,
}

impl Client {
    fn key(&self) -> usize {
        usize::try_from(self.io.stream().as_raw_fd()).unwrap_or(usize::MAX)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.metrics.client_connections.fetch_sub(1, Relaxed);
    }
}

/// How workers hand kept-alive connections back, and how the front end is woken.
#[derive(Clone)]
pub struct Back {
    tx: Sender<Client>,
    waker: Arc<Waker>,
    /// True while the front end waits in `poll`.
    asleep: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
}

impl Back {
    /// Returns a connection whose request is done to the front end, for its next request.
    pub fn give(&self, client: Client) {
        if client.io.stream().set_nonblocking(true).is_err() {
            return; // dropped: closed
        }
        let stirred = client.stirred.clone();
        if self.tx.send(client).is_err() {
            return;
        }
        fence(SeqCst);
        if stirred.load(SeqCst) && self.asleep.load(SeqCst) {
            self.wake();
        }
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// False once the front end has closed the listener (draining).
    pub fn listening(&self) -> bool {
        self.listening.load(SeqCst)
    }
}

/// A connection waiting on the front end for its next request, or for its answer to go out.
struct Entry {
    client: Client,
    /// Past this: an idle connection is closed, a begun head gets 408, a stalled answer is dropped.
    deadline: Instant,
    head_begun: bool,
    /// Answer bytes the socket has not taken yet; no new request is read until they are out.
    out: Vec<u8>,
    close_after: bool,
}

impl Entry {
    fn waiting(client: Client, cfg: &Config, first: bool) -> Self {
        let mut e = Entry {
            client,
            deadline: Instant::now(),
            head_begun: false,
            out: Vec::new(),
            close_after: false,
        };
        e.wait_for_request(cfg, first);
        e
    }

    /// A new request's first byte: the idle timeout, or the header timeout when it is the
    /// connection's first request or bytes of it are already here (pipelined).
    fn wait_for_request(&mut self, cfg: &Config, first: bool) {
        self.head_begun = self.client.io.has_buffered();
        let wait = if first || self.head_begun {
            cfg.client_header_timeout
        } else {
            cfg.client_idle_timeout
        };
        self.deadline = Instant::now() + wait;
    }
}

pub struct Front {
    shared: Arc<Shared>,
    poll: Poll,
    listener: Option<TcpListener>,
    /// Indexed by file descriptor: the connections the front end holds now.
    entries: Vec<Option<Entry>>,
    /// Indexed by file descriptor: the `stirred` flag of each connection a worker has now.
    away: Vec<Option<Arc<AtomicBool>>>,
    returns: Receiver<Client>,
    back: Back,
    /// Queued requests and when their queue time runs out, oldest first.
    queued: VecDeque<(Instant, Arc<Slot<Parked>>)>,
    accept_paused_until: Option<Instant>,
    last_error_log: Option<Instant>,
}

impl Front {
    /// Sets up the event loop on `listener`; `Back` is what workers hand connections back with.
    pub fn new(shared: Arc<Shared>, listener: TcpListener) -> io::Result<(Front, Back)> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, returns) = crossbeam_channel::unbounded();
        let back = Back {
            tx,
            waker,
            asleep: Arc::new(AtomicBool::new(false)),
            listening: Arc::new(AtomicBool::new(true)),
        };
        let front = Front {
            shared,
            poll,
            listener: Some(listener),
            entries: Vec::new(),
            away: Vec::new(),
            returns,
            back: back.clone(),
            queued: VecDeque::new(),
            accept_paused_until: None,
            last_error_log: None,
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
            }
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(t) = self.accept_paused_until {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            self.back.asleep.store(true, SeqCst);
            fence(SeqCst);
            if !self.returns.is_empty() {
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
                    Token(key) => {
                        if !guarded(&shared, || self.ready(key)) {
                            self.close(key);
                        }
                    }
                }
            }
            guarded(&shared, || self.take_returns());
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

    fn accept(&mut self) {
        loop {
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
    }

    fn open(&mut self, stream: TcpStream, peer: SocketAddr) {
        let cfg = self.shared.config();
        let open = self.shared.metrics.client_connections.fetch_add(1, Relaxed);
        let client = Client {
            io: ClientConn::new(stream, peer, cfg.client_idle_timeout),
            shared: self.shared.clone(),
            stirred: Arc::new(AtomicBool::new(false)),
        };
        if open as usize >= cfg.max_connections {
            return refuse(&self.shared, client);
        }
        let key = client.key();
        let registered = client.io.stream().set_nonblocking(true).is_ok()
            && self
                .poll
                .registry()
                .register(
                    &mut SourceFd(&client.io.stream().as_raw_fd()),
                    Token(key),
                    Interest::READABLE,
                )
                .is_ok();
        if registered {
            self.insert(key, Entry::waiting(client, &cfg, true));
        }
    }

    fn insert(&mut self, key: usize, entry: Entry) {
        if key >= self.entries.len() {
            self.entries.resize_with(key + 1, || None);
            self.away.resize_with(key + 1, || None);
        }
        self.away[key] = None;
        entry.client.stirred.store(false, SeqCst);
        self.entries[key] = Some(entry);
    }

    /// The connection leaves for a worker.
    fn send_away(&mut self, key: usize) -> Option<Entry> {
        let entry = self.entries.get_mut(key).and_then(Option::take)?;
        self.away[key] = Some(entry.client.stirred.clone());
        Some(entry)
    }

    fn entry(&mut self, key: usize) -> Option<&mut Entry> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    /// Closes a connection the front end holds (the kernel drops its epoll registration).
    fn close(&mut self, key: usize) {
        if let Some(slot) = self.entries.get_mut(key) {
            *slot = None;
        }
    }

    /// The socket is readable or writable (or closed): go on with what the connection was doing.
    fn ready(&mut self, key: usize) {
        let Some(e) = self.entry(key) else {
            if let Some(stirred) = self.away.get(key).and_then(Option::as_ref) {
                stirred.store(true, SeqCst); // its worker wakes us when handing it back
            }
            return;
        };
        if e.out.is_empty() {
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
            self.insert(key, Entry::waiting(client, &cfg, false));
            // Whatever arrived while a worker had the connection raised no event here.
            self.advance(key);
        }
    }

    /// Reads and handles request heads until the socket has no more or the connection leaves.
    fn advance(&mut self, key: usize) {
        let cfg = self.shared.config();
        loop {
            let Some(e) = self.entry(key) else {
                return;
            };
            if !e.out.is_empty() {
                return;
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
    }

    /// Handles one request head. True if the connection is still here, ready for the next one.
    fn request(&mut self, key: usize, head: RequestHead, cfg: &Config) -> bool {
        let started = Instant::now();
        if admin::is_admin(&head) {
            let (bytes, keep) = admin::answer(&self.shared, &head);
            return self.send(key, &bytes, keep);
        }
        let in_progress = self.shared.begin_request();
        let request_id = headers::request_id(&head);
        let body_done = head.framing == Framing::None;
        // Answered here, with no worker: `OPTIONS *`, a draining sluice, an open breaker.
        let local = if head.path == "*" {
            Some((options_star(&head), Outcome::Upstream(200)))
        } else if self.shared.draining() {
            let reason = Reason::Draining;
            let answer = forward::error_answer(&head, reason, &request_id, None, body_done);
            Some((answer, Outcome::Sluice(reason)))
        } else {
            self.shared.breaker_open_for().map(|left| {
                let reason = Reason::CircuitOpen;
                let retry_after = Some(retry_after_secs(left));
                let answer =
                    forward::error_answer(&head, reason, &request_id, retry_after, body_done);
                (answer, Outcome::Sluice(reason))
            })
        };
        if let Some((answer, outcome)) = local {
            let Some(peer) = self.entry(key).map(|e| e.client.io.peer) else {
                return false;
            };
            let ctx = RequestCtx::new(&head, &request_id, peer, started, Duration::ZERO);
            return self.answer_here(key, &ctx, answer, outcome);
        }
        let Some(entry) = self.send_away(key) else {
            return false;
        };
        let slot = Arc::new(Slot::new(Parked {
            client: entry.client,
            head,
            request_id,
            started,
            in_progress,
        }));
        let refused = match self.shared.admission.try_enter() {
            None => Reason::QueueFull,
            Some(ticket) => match self.shared.queue.try_push(Job {
                slot: slot.clone(),
                ticket,
            }) {
                Ok(()) => {
                    // Claimed entries at the front are dropped as new ones come in.
                    while self.queued.front().is_some_and(|(_, s)| s.is_taken()) {
                        self.queued.pop_front();
                    }
                    self.queued.push_back((started + cfg.queue_timeout, slot));
                    return false;
                }
                Err(_) => Reason::QueueFull,
            },
        };
        match slot.take() {
            Some(parked) => self.answer_parked(parked, refused, Duration::ZERO),
            None => false,
        }
    }

    /// Answers a request that no worker will serve (queue full, queue time run out) and takes
    /// its connection back. True if the connection is still here, ready for the next request.
    fn answer_parked(&mut self, parked: Parked, reason: Reason, waited: Duration) -> bool {
        let Parked {
            client,
            head,
            request_id,
            started,
            in_progress,
        } = parked;
        let cfg = self.shared.config();
        let (key, peer) = (client.key(), client.io.peer);
        let body_done = head.framing == Framing::None;
        let answer = forward::error_answer(&head, reason, &request_id, None, body_done);
        self.insert(key, Entry::waiting(client, &cfg, false));
        let ctx = RequestCtx::new(&head, &request_id, peer, started, waited);
        let kept = self.answer_here(key, &ctx, answer, Outcome::Sluice(reason));
        drop(in_progress);
        kept
    }

    /// Sends an answer sluice makes itself and records it (metrics, access log). True if the
    /// connection is still here, ready for the next request.
    fn answer_here(
        &mut self,
        key: usize,
        ctx: &RequestCtx<'_>,
        (bytes, keep): (Vec<u8>, bool),
        outcome: Outcome,
    ) -> bool {
        let kept = self.send(key, &bytes, keep);
        let fin = Finished {
            bytes_out: bytes.len() as u64,
            ..Finished::new(outcome, kept)
        };
        access_log::record(&self.shared, ctx, &fin);
        kept
    }

    /// A head that could not be read: 400/408/414/431, then close.
    fn refuse_head(&mut self, key: usize, reason: Reason) {
        let Some(peer) = self.entry(key).map(|e| e.client.io.peer) else {
            return;
        };
        let request_id = headers::new_request_id();
        let bytes = write::error_response(reason, &request_id, None, true, false);
        let ctx = RequestCtx {
            method: "-",
            target: "-",
            request_id: &request_id,
            peer,
            started: Instant::now(),
            queue_wait: Duration::ZERO,
        };
        self.answer_here(key, &ctx, (bytes, false), Outcome::Sluice(reason));
    }

    /// Writes an answer without blocking; what the socket does not take now goes out as it
    /// drains. True if the connection stays here, ready for its next request.
    fn send(&mut self, key: usize, bytes: &[u8], keep: bool) -> bool {
        let cfg = self.shared.config();
        let Some(e) = self.entry(key) else {
            return false;
        };
        let Ok(n) = write_some(e.client.io.stream(), bytes) else {
            self.close(key);
            return false;
        };
        if n == bytes.len() {
            if keep {
                e.wait_for_request(&cfg, false);
                return true;
            }
            let _ = e.client.io.stream().shutdown(std::net::Shutdown::Write);
            self.close(key);
            return false;
        }
        e.out = bytes[n..].to_vec();
        e.close_after = !keep;
        e.deadline = Instant::now() + e.client.io.io_timeout;
        self.interest(key, Interest::READABLE | Interest::WRITABLE);
        false
    }

    /// The socket took more of a pending answer.
    fn flush(&mut self, key: usize) {
        let cfg = self.shared.config();
        let Some(e) = self.entry(key) else {
            return;
        };
        let Ok(n) = write_some(e.client.io.stream(), &e.out) else {
            return self.close(key);
        };
        e.out.drain(..n);
        if !e.out.is_empty() {
            return;
        }
        e.out = Vec::new();
        if e.close_after {
            let _ = e.client.io.stream().shutdown(std::net::Shutdown::Write);
            return self.close(key);
        }
        e.wait_for_request(&cfg, false);
        self.interest(key, Interest::READABLE);
        self.advance(key);
    }

    fn interest(&mut self, key: usize, interest: Interest) {
        let Some(e) = self.entries.get(key).and_then(Option::as_ref) else {
            return;
        };
        let fd = e.client.io.stream().as_raw_fd();
        if self
            .poll
            .registry()
            .reregister(&mut SourceFd(&fd), Token(key), interest)
            .is_err()
        {
            self.close(key);
        }
    }

    /// Deadlines: queue time, idle and header timeouts, stalled answers.
    fn tick(&mut self, now: Instant) {
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
            if e.head_begun && e.out.is_empty() {
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

/// Writes as much of `bytes` as the non-blocking socket takes now.
fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < bytes.len() {
        match stream.write(&bytes[n..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Over the connection cap: a best-effort 503 without blocking, then close.
fn refuse(shared: &Shared, client: Client) {
    let started = Instant::now();
    let bytes = write::error_response(
        Reason::TooManyConnections,
        &headers::new_request_id(),
        None,
        true,
        false,
    );
    let _ = client.io.stream().set_nonblocking(true);
    let _ = write_some(client.io.stream(), &bytes);
    shared.metrics.record(
        Outcome::Sluice(Reason::TooManyConnections),
        started.elapsed(),
    );
}

/// `OPTIONS *` asks about the server itself: sluice answers it (it cannot be sent as a URI).
fn options_star(head: &RequestHead) -> (Vec<u8>, bool) {
    let keep = head.keep_alive && head.framing == Framing::None;
    let bytes = write::Simple {
        status: 200,
        content_type: "text/plain",
        body: b"",
        extra: &[(
            "Allow",
            "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE",
        )],
        close: !keep,
        http10: head.http10,
        head_only: false,
    }
    .to_bytes();
    (bytes, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

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
