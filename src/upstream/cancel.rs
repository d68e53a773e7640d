//! Cancelling an upstream exchange whose client has hung up (README "What can hold a worker").
//! Each client connection has one `Cancel`. While a worker has the connection, the front end
//! still watches its socket; a hang-up (`client_gone`) shuts down the upstream socket the
//! worker's current attempt uses, so that its connect, write or read returns at once, and wakes
//! a retry's back-off — once the worker has said it expects nothing more from the client
//! (`waiting`; before that, its own read of the body sees the hang-up). The end of a drain's
//! grace (`shutdown`) cancels at once, waiting or not: it also ends the worker's read of a
//! request body, by shutting down the read side of the client socket the worker registered for
//! that read (`reading`; README "Shutdown").
//!
//! Who may shut which socket down holds by construction:
//! - every attempt has an identity that is never reused (`Attempt`, one global counter), and its
//!   socket is attached to it while the attempt runs: the guard's `Drop` detaches it, before any
//!   back-off and whether the attempt succeeded or not;
//! - an upstream socket (`Line`) records the attempt that uses it, and is shut down for a
//!   hang-up only if that attempt still owns it — checked under the socket's lock. The transport
//!   detaches the socket whenever ureq asks whether it is fit for the pool (the moment it goes
//!   back in, to sluice's pool or ureq's; from ureq's, again when it is taken out), so a socket
//!   in the pool, or in another attempt's hands, belongs to no client that can hang up.

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::runnable::MarkedStream;

const WAITING: u8 = 1;
const HUNG_UP: u8 = 2;
const CANCELLED: u8 = 4;
/// The drain's grace is over: cancelled whatever the worker still reads (kept across requests).
const SHUT: u8 = 8;

/// The next attempt's identity; 0 means "no attempt".
static NEXT_ATTEMPT: AtomicU64 = AtomicU64::new(1);

/// An upstream socket, and the attempt that uses it now (0: none — idle, in the pool).
#[derive(Debug)]
pub struct Line {
    stream: MarkedStream,
    owner: Mutex<u64>,
}

impl Line {
    pub fn new(stream: MarkedStream) -> Self {
        Line {
            stream,
            owner: Mutex::new(0),
        }
    }

    pub fn stream(&self) -> &MarkedStream {
        &self.stream
    }

    /// The socket is between requests: no client's hang-up may reach it.
    pub fn detach(&self) {
        *self.owner.lock() = 0;
    }

    fn claim(&self, attempt: u64) {
        *self.owner.lock() = attempt;
    }

    /// Lets go of the socket if `attempt` still owns it.
    fn release(&self, attempt: u64) {
        let mut owner = self.owner.lock();
        if *owner == attempt {
            *owner = 0;
        }
    }

    /// A hang-up: shuts the socket down only if `attempt` still owns it.
    fn shutdown_for(&self, attempt: u64) {
        let owner = self.owner.lock();
        if *owner == attempt {
            let _ = self.stream.socket().shutdown(Shutdown::Both);
        }
    }
}

/// One client connection's cancellation state, shared by the front end and the worker.
#[derive(Default)]
pub struct Cancel {
    state: AtomicU8,
    /// The socket the current attempt uses, and that attempt.
    socket: Mutex<Option<(Weak<Line>, u64)>>,
    /// Wakes a back-off wait when the client hangs up.
    wake: Condvar,
    /// A duplicate of the client socket while the worker reads the request body from it
    /// (`reading`), so that `shutdown` can end that read.
    client: Mutex<Option<TcpStream>>,
}

impl Cancel {
    /// A new request on the connection: nothing is awaited or cancelled yet (a hang-up stays).
    fn reset(&self) {
        let before = self.state.fetch_and(HUNG_UP | SHUT, SeqCst);
        *self.socket.lock() = None;
        if before & SHUT != 0 {
            self.state.fetch_or(CANCELLED, SeqCst); // the grace is over: nothing starts
        }
    }

    /// The front end saw the client hang up (or its socket fail).
    pub fn client_gone(&self) {
        let before = self.state.fetch_or(HUNG_UP, SeqCst);
        if before & WAITING != 0 {
            self.cancel_now();
        } else {
            let _held = self.socket.lock();
            self.wake.notify_all();
        }
    }

    /// The drain's grace is over: the exchange is cancelled now, whatever the worker still
    /// reads from the client — its attempt's upstream socket shut down, a back-off woken, and
    /// its read of the request body ended (the client socket's read side is shut down; the
    /// answer can still be written). The worker answers 503 `shutdown`.
    pub fn shutdown(&self) {
        self.state.fetch_or(SHUT | HUNG_UP, SeqCst);
        self.cancel_now();
        if let Some(client) = self.client.lock().as_ref() {
            let _ = client.shutdown(Shutdown::Read);
        }
    }

    /// The worker reads the request body from `client` until the returned guard drops: a
    /// `shutdown` meanwhile (or before) ends that read. Holds a duplicate of the socket, so that
    /// no other socket can ever be shut down in its name.
    pub fn reading(&self, client: &TcpStream) -> Reading<'_> {
        if let Ok(dup) = client.try_clone() {
            let mut held = self.client.lock();
            if self.state.load(SeqCst) & SHUT != 0 {
                let _ = dup.shutdown(Shutdown::Read);
            }
            *held = Some(dup);
        }
        Reading(self)
    }

    /// True once the client has hung up.
    pub fn hung_up(&self) -> bool {
        self.state.load(SeqCst) & HUNG_UP != 0
    }

    /// The worker has all it needs from the client: a hang-up from now on cancels at once, and
    /// one that came before does so now.
    pub fn waiting(&self) {
        let before = self.state.fetch_or(WAITING, SeqCst);
        if before & HUNG_UP != 0 {
            self.cancel_now();
        }
    }

    /// The upstream's part is over (its whole response is read, and its connection may be back
    /// in the pool): a hang-up from now on cancels nothing.
    pub fn upstream_done(&self) {
        self.state.fetch_and(!WAITING, SeqCst);
        self.detach(None);
    }

    /// True if the exchange was cancelled: its failure is the client's abort, not the upstream's.
    pub fn cancelled(&self) -> bool {
        self.state.load(SeqCst) & CANCELLED != 0
    }

    /// Waits `delay` (a retry's back-off) unless the client hangs up meanwhile. True if it did:
    /// the request ends with no further attempt.
    pub fn backoff(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let mut held = self.socket.lock();
        crate::runnable::blocking(|| {
            while !self.hung_up() && !self.wake.wait_until(&mut held, until).timed_out() {}
        });
        self.hung_up()
    }

    fn cancel_now(&self) {
        self.state.fetch_or(CANCELLED, SeqCst);
        let mut socket = self.socket.lock();
        if let Some((line, attempt)) = socket.take() {
            if let Some(line) = line.upgrade() {
                line.shutdown_for(attempt);
            }
        }
        self.wake.notify_all();
    }

    /// `attempt` uses `line` now (which it owns already); shut it down at once if the exchange
    /// was cancelled already.
    fn attach(&self, line: &Arc<Line>, attempt: u64) {
        let mut socket = self.socket.lock();
        if self.cancelled() {
            line.shutdown_for(attempt);
        } else {
            *socket = Some((Arc::downgrade(line), attempt));
        }
    }

    /// Forgets the socket of `attempt` (of any attempt: `None`), which lets go of it.
    fn detach(&self, attempt: Option<u64>) {
        let mut socket = self.socket.lock();
        if attempt.is_none() || socket.as_ref().map(|s| s.1) == attempt {
            if let Some((line, attempt)) = socket.take() {
                if let Some(line) = line.upgrade() {
                    line.release(attempt);
                }
            }
        }
    }
}

/// While a worker reads a request body (`Cancel::reading`); dropped, the duplicate socket closes.
pub struct Reading<'a>(&'a Cancel);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        *self.0.client.lock() = None;
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
    static ATTEMPT: Cell<u64> = const { Cell::new(0) };
}

/// The exchange this worker thread runs now. Dropped, it lets go of the upstream socket (which
/// may go back to the pool) and of the current exchange.
pub struct Current(Arc<Cancel>);

impl Current {
    pub fn set(cancel: &Arc<Cancel>) -> Current {
        cancel.reset();
        CURRENT.with(|c| *c.borrow_mut() = Some(cancel.clone()));
        Current(cancel.clone())
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        self.0.upstream_done();
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// One attempt of the worker thread's current exchange: from `begin` to its drop, the sockets
/// it connects, writes or reads are attached to it; dropped, its socket is detached — before a
/// back-off, and before anything else can take that socket out of the pool.
pub struct Attempt(u64);

impl Attempt {
    pub fn begin() -> Attempt {
        let id = NEXT_ATTEMPT.fetch_add(1, Relaxed);
        ATTEMPT.with(|a| a.set(id));
        Attempt(id)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        ATTEMPT.with(|a| {
            if a.get() == self.0 {
                a.set(0);
            }
        });
        CURRENT.with(|c| {
            if let Some(cancel) = c.borrow().as_ref() {
                cancel.detach(Some(self.0));
            }
        });
    }
}

/// Called by the transport before each socket operation (and right after a connect starts):
/// attaches `line` to this thread's current attempt unless `attached` says it is already.
pub fn attach_current(line: &Arc<Line>, attached: &mut u64) {
    let attempt = ATTEMPT.with(Cell::get);
    if attempt == 0 || *attached == attempt {
        return;
    }
    CURRENT.with(|c| {
        if let Some(cancel) = c.borrow().as_ref() {
            *attached = attempt;
            line.claim(attempt);
            cancel.attach(line, attempt);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected loopback pair: the upstream socket as a `Line`, and its peer.
    fn line() -> (Arc<Line>, std::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Arc::new(Line::new(MarkedStream::new(s))), peer)
    }

    /// True once the peer sees the socket closed (shut down).
    fn shut(peer: &mut std::net::TcpStream) -> bool {
        peer.set_nonblocking(true).unwrap();
        let r = peer.read(&mut [0u8; 1]);
        peer.set_nonblocking(false).unwrap();
        matches!(r, Ok(0))
    }

    #[test]
    fn a_hang_up_while_waiting_shuts_the_attempts_socket_down() {
        let cancel = Arc::new(Cancel::default());
        let (line, mut peer) = line();
        let _current = Current::set(&cancel);
        let _attempt = Attempt::begin();
        let mut attached = 0;
        attach_current(&line, &mut attached);
        cancel.waiting();
        assert!(!shut(&mut peer));
        cancel.client_gone();
        std::thread::sleep(Duration::from_millis(20));
        assert!(shut(&mut peer));
        assert!(cancel.cancelled());
    }

    #[test]
    fn a_hang_up_before_waiting_cancels_only_when_the_worker_is_done_with_the_client() {
        let cancel = Arc::new(Cancel::default());
        let (line, mut peer) = line();
        let _current = Current::set(&cancel);
        let _attempt = Attempt::begin();
        cancel.client_gone();
        assert!(
            !cancel.cancelled(),
            "the worker may still be reading the body"
        );
        let mut attached = 0;
        attach_current(&line, &mut attached);
        cancel.waiting();
        std::thread::sleep(Duration::from_millis(20));
        assert!(cancel.cancelled() && shut(&mut peer));
    }

    /// The defect this design removes: identities made of an address and a per-connection count
    /// were reused by the next connection, whose first request then never attached.
    #[test]
    fn every_attempt_attaches_even_on_a_new_connection_at_the_same_address() {
        let (line, _peer) = line();
        let mut attached = 0;
        for _ in 0..3 {
            let cancel = Arc::new(Cancel::default());
            let _current = Current::set(&cancel);
            let _attempt = Attempt::begin();
            attach_current(&line, &mut attached);
            assert!(cancel.socket.lock().is_some(), "attached");
        }
    }

    #[test]
    fn an_ended_attempt_or_a_pooled_socket_is_never_shut_down_by_a_hang_up() {
        let (line, mut peer) = line();
        let mut attached = 0;
        // The attempt ended (back-off): its client hangs up.
        let cancel = Arc::new(Cancel::default());
        let current = Current::set(&cancel);
        let attempt = Attempt::begin();
        attach_current(&line, &mut attached);
        cancel.waiting();
        drop(attempt);
        cancel.client_gone();
        assert!(
            cancel.cancelled() && !shut(&mut peer),
            "detached at the end"
        );
        drop(current);
        // Back in the pool while the attempt still runs, then another client's attempt takes
        // it: the first client's hang-up cannot reach it.
        let first = Arc::new(Cancel::default());
        let current = Current::set(&first);
        let _attempt = Attempt::begin();
        attach_current(&line, &mut attached);
        first.waiting();
        line.detach(); // ureq's pool check
        drop(current);
        let second = Arc::new(Cancel::default());
        let _current = Current::set(&second);
        let _attempt = Attempt::begin();
        attach_current(&line, &mut attached);
        first.client_gone();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!shut(&mut peer), "the second request's socket is intact");
        second.waiting();
        second.client_gone();
        std::thread::sleep(Duration::from_millis(20));
        assert!(shut(&mut peer), "its own client's hang-up still cancels it");
    }

    #[test]
    fn the_end_of_the_grace_cancels_at_once_and_ends_the_body_read() {
        let cancel = Arc::new(Cancel::default());
        let (line, mut peer) = line();
        let _current = Current::set(&cancel);
        let _attempt = Attempt::begin();
        let mut attached = 0;
        attach_current(&line, &mut attached);
        // The worker blocks reading the request body from a silent client.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut ours, _) = l.accept().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reading = cancel.reading(&ours);
        let read = std::thread::spawn(move || {
            let started = Instant::now();
            (ours.read(&mut [0u8; 16]).ok(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        cancel.shutdown();
        let (got, took) = read.join().unwrap();
        assert_eq!(got, Some(0), "the body read ends");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(
            cancel.cancelled() && shut(&mut peer),
            "not waiting, yet cancelled"
        );
        drop(reading);
        Current::set(&cancel);
        assert!(cancel.cancelled(), "nothing starts on it any more");
    }

    #[test]
    fn a_hang_up_wakes_a_backoff() {
        let cancel = Arc::new(Cancel::default());
        let _current = Current::set(&cancel);
        cancel.waiting();
        assert!(!cancel.backoff(Duration::from_millis(10)), "no hang-up");
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.client_gone();
        });
        let started = Instant::now();
        assert!(cancel.backoff(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
    }
}
