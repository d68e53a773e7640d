//! The types that cross from one stage to the next, defined below both so that neither stage
//! imports the other: the front end parks a request (`Parked`) in a `Slot` and pushes a `Job`
//! onto the queue; a worker takes it, and hands a kept-alive `Client` back through `Back`.
//! docs/ARCHITECTURE.md "Who owns a connection when" draws the hand-offs.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::{Registry, Waker};

use super::slot::Slot;
use crate::http::conn::ClientConn;
use crate::policy::admission::Ticket;
use crate::policy::fair::Group;
use crate::policy::headers::RequestId;
use crate::state::{InProgress, Shared};
use crate::upstream::cancel::Cancel;
use crate::upstream::request::Sendable;

/// The next client connection's number (`Client::token`).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The descriptor (the front end's key) an epoll token names (`Client::token`).
pub fn token_key(token: usize) -> usize {
    token & 0xFFFF_FFFF
}

/// A client connection, wherever it is (the front end, the queue, a worker). Counted in the
/// `client_connections` gauge until it is dropped, which closes it.
pub struct Client {
    pub io: ClientConn,
    shared: Arc<Shared>,
    /// Set by the front end when the socket stirred (readable, closed) while a worker had the
    /// connection: only then does handing it back need to wake the front end (the event that
    /// would have told it was spent). Otherwise the next request's own event wakes it.
    pub stirred: Arc<AtomicBool>,
    /// The front end cancels the worker's upstream exchange through this when the client
    /// hangs up while a worker has its request.
    pub cancel: Arc<Cancel>,
    /// True while the front end watches this socket for hang-ups only, because a worker waits
    /// on it for the next request itself (`pool/keep.rs`); `Back::give` watches it whole again.
    pub kept: bool,
    /// When a worker last finished a response on it.
    pub last_done: Option<Instant>,
    /// The request whose answer the front end still sends (bytes a worker left unsent, or an
    /// answer the socket did not take at once): counted in progress until the bytes are out,
    /// so that a drain waits for them (README "Shutdown").
    pub delivering: Option<InProgress>,
    /// Never reused (its descriptor is): part of its epoll token (`token`).
    id: u64,
    /// Its current request came promptly after its previous response (`pool/keep.rs`).
    pub prompt: bool,
}

impl Client {
    /// Counts a new connection in the `client_connections` gauge; returns it with the count
    /// of connections that were open before it.
    pub fn open(io: ClientConn, shared: &Arc<Shared>) -> (Client, i64) {
        let before = shared.metrics.client_connections.fetch_add(1, Relaxed);
        let client = Client {
            io,
            shared: shared.clone(),
            stirred: Arc::new(AtomicBool::new(false)),
            cancel: Arc::default(),
            kept: false,
            last_done: None,
            delivering: None,
            prompt: false,
            id: NEXT_CONNECTION.fetch_add(1, Relaxed),
        };
        (client, before)
    }

    /// The connection's epoll token: its descriptor in the low 32 bits, the low 32 bits of its
    /// number above (on 64-bit targets). An event is thus matched to the connection it was
    /// for, never to a later one given the same descriptor while the event waited in a batch
    /// (that one's request would be cancelled by the other's hang-up).
    pub fn token(&self) -> usize {
        (self.key() as u64 | (self.id << 32)) as usize
    }

    /// The front end's key for this connection: its file descriptor.
    pub fn key(&self) -> usize {
        usize::try_from(self.io.stream().as_raw_fd()).unwrap_or(usize::MAX)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.metrics.client_connections.fetch_sub(1, Relaxed);
    }
}

/// A request with its connection, parked in a slot while it waits for a worker.
pub struct Parked {
    pub client: Client,
    pub head: Sendable,
    pub request_id: RequestId,
    /// When its head was parsed: response time and queue wait count from here.
    pub started: Instant,
    pub in_progress: InProgress,
    /// Its client group (`client_key`), for the access log.
    pub group: Group,
}

/// One queued request: the slot holding it (which the front end may empty first when the
/// request's queue time runs out).
pub struct Job {
    pub slot: Arc<Slot<Parked>>,
    /// Held until the worker is done with the job; counts it against the admission limit.
    pub ticket: Ticket,
}

/// What mio's `Interest::READABLE` registers, edge-triggered; and hang-ups only.
const WATCH_ALL: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const WATCH_HANGUPS: u32 = (libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// How workers hand kept-alive connections back, and how the front end is woken.
#[derive(Clone)]
pub struct Back {
    tx: Sender<Client>,
    waker: Arc<Waker>,
    /// The front end's event loop (its epoll instance, a duplicate descriptor of its own).
    events: Arc<Registry>,
    /// True while the front end waits in `poll`.
    pub asleep: Arc<AtomicBool>,
    /// False once the front end has closed the listener (draining).
    pub listening: Arc<AtomicBool>,
}

impl Back {
    pub fn new(tx: Sender<Client>, waker: Waker, events: Registry) -> Self {
        Back {
            tx,
            waker: Arc::new(waker),
            events: Arc::new(events),
            asleep: Arc::new(AtomicBool::new(false)),
            listening: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Returns a connection whose request is done to the front end, for its next request.
    pub fn give(&self, mut client: Client) {
        if client.kept {
            // Watched whole again first: a request that arrived meanwhile raises its event
            // now (epoll checks readiness when a registration changes).
            client.kept = false;
            if !self.watch(&client, WATCH_ALL) {
                return; // dropped: closed
            }
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

    /// The front end watches `client` for hang-ups only (`EPOLLRDHUP`), while a worker waits
    /// on it for its next request: that request's arrival then wakes the worker alone, not
    /// the front end too, and a hang-up still cancels the worker's upstream exchange.
    pub fn watch_hangups_only(&self, client: &mut Client) -> bool {
        client.kept = self.watch(client, WATCH_HANGUPS);
        client.kept
    }

    /// Changes the events the front end's loop watches on `client`'s socket, keeping its token
    /// (mio registers sockets edge-triggered with the token in `u64`; mio's own API cannot
    /// ask for hang-ups without readability).
    fn watch(&self, client: &Client, events: u32) -> bool {
        let mut ev = libc::epoll_event {
            events,
            u64: client.token() as u64,
        };
        // SAFETY: `epoll_ctl(2)` on the front end's epoll descriptor (a duplicate this `Back`
        // keeps open) for a socket `client` owns, with a pointer to a local event valid for
        // the call. No safe wrapper changes a registration to hang-ups only.
        let done = unsafe {
            libc::epoll_ctl(
                self.events.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                client.io.stream().as_raw_fd(),
                &mut ev,
            )
        };
        done == 0
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// False once the front end has closed the listener (draining).
    pub fn listening(&self) -> bool {
        self.listening.load(SeqCst)
    }
}
