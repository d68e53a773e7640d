//! The front end's connection table and its non-blocking writer: the connections it holds now
//! (indexed by file descriptor), which ones a worker has, and answers written without blocking
//! — what the socket does not take now goes out as it drains, and no new request is read from
//! that connection until it has.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::Front;
use crate::config::Config;
use crate::http::conn::recv_now;
use crate::policy::fair::Group;
use crate::policy::headers::RequestId;
use crate::pool::handoff::Client;
use crate::state::InProgress;
use crate::upstream::request::Sendable;

/// A connection waiting on the front end for its next request, or for its answer to go out.
pub(super) struct Entry {
    pub client: Client,
    /// Past this: an idle connection is closed, a begun head gets 408, a stalled answer is dropped.
    pub deadline: Instant,
    pub head_begun: bool,
    /// No request has come on this connection yet (a drain leaves it open for its first).
    pub fresh: bool,
    /// Answer bytes the socket has not taken yet; no new request is read until they are out.
    pub out: Vec<u8>,
    pub close_after: bool,
    /// A request whose body the front end is reading before it goes to a worker.
    pub body_wait: Option<Pending>,
    /// Close gracefully after the answer: the client may still be sending a request body.
    pub linger_on_close: bool,
    /// The answer is out and sluice has closed its side: what the client still sends is read
    /// and dropped until it closes too (or `LINGER` passes), so that an answer sent before the
    /// client finished its request body is not lost to a reset.
    pub lingering: bool,
}

/// The longest a closing connection is read and drained after sluice's last answer.
const LINGER: Duration = Duration::from_secs(2);

/// A request waiting for its (small) body to arrive whole.
pub(super) struct Pending {
    pub head: Sendable,
    pub request_id: RequestId,
    pub started: Instant,
    pub in_progress: InProgress,
    /// Its client group (`client_key`).
    pub group: Group,
}

impl Entry {
    pub fn waiting(client: Client, cfg: &Config, first: bool) -> Self {
        let mut e = Entry {
            client,
            deadline: Instant::now(),
            head_begun: false,
            fresh: first,
            out: Vec::new(),
            close_after: false,
            body_wait: None,
            linger_on_close: false,
            lingering: false,
        };
        e.wait_for_request(cfg, first);
        let (out, close) = e.client.io.take_unsent();
        if out.is_empty() {
            e.client.delivering = None; // nothing of its answer left to send
        }
        if !out.is_empty() || close {
            // A worker left part of a response for a slow reader, or its answer on a connection
            // that closes: the bytes go out first, then a graceful close.
            e.out = out;
            e.close_after = close;
            e.linger_on_close = close;
            e.deadline = Instant::now() + e.client.io.io_timeout;
        }
        e
    }

    /// A new request's first byte: the idle timeout, or the header timeout when it is the
    /// connection's first request or bytes of it are already here (pipelined).
    pub fn wait_for_request(&mut self, cfg: &Config, first: bool) {
        self.fresh = first;
        self.head_begun = self.client.io.has_buffered();
        let wait = if first || self.head_begun {
            cfg.client_header_timeout
        } else {
            cfg.client_idle_timeout
        };
        self.deadline = Instant::now() + wait;
    }
}

impl Entry {
    /// A kept-alive connection waiting for its next request, with nothing of it here yet: what a
    /// drain closes (as nginx's graceful quit does).
    fn idle(&self) -> bool {
        !self.fresh
            && !self.head_begun
            && !self.lingering
            && self.out.is_empty()
            && self.body_wait.is_none()
            && !self.client.io.has_buffered()
    }
}

impl Front {
    /// Draining: closes every idle kept-alive connection (`close_if_idle`).
    pub(super) fn close_idle(&mut self) {
        for key in 0..self.entries.len() {
            self.close_if_idle(key);
        }
    }

    /// While draining, a connection that has become idle is closed — after reading what its
    /// socket holds, so that a request already sent on it is served (with `Connection: close`),
    /// not lost to the reset a close with unread bytes makes. sluice's side closes first and
    /// what still arrives is read and dropped (`linger`): a request sent meanwhile meets a clean
    /// close, never a reset. True if the connection was handled here (read, and closed if it
    /// was still idle).
    pub(super) fn close_if_idle(&mut self, key: usize) -> bool {
        if !self.shared.draining() || !self.is_idle(key) {
            return false;
        }
        self.advance(key);
        if self.is_idle(key) {
            self.linger(key);
        }
        true
    }

    fn is_idle(&self, key: usize) -> bool {
        self.entries
            .get(key)
            .and_then(Option::as_ref)
            .is_some_and(Entry::idle)
    }

    /// The drain's grace is over: an answer still being sent to a slow reader is cut (its
    /// connection closes short of the end). Returns how many were. A lingering connection (its
    /// answer is out) lingers on, at most until sluice exits.
    pub(super) fn cut_deliveries(&mut self) -> usize {
        let mut cut = 0;
        for key in 0..self.entries.len() {
            let held = self.entries[key]
                .as_ref()
                .is_some_and(|e| e.client.delivering.is_some() && !e.lingering);
            if held {
                self.close(key);
                cut += 1;
            }
        }
        cut
    }

    pub(super) fn insert(&mut self, key: usize, entry: Entry) {
        if key >= self.entries.len() {
            self.entries.resize_with(key + 1, || None);
            self.away.resize_with(key + 1, || None);
        }
        self.away[key] = None;
        entry.client.stirred.store(false, SeqCst);
        self.entries[key] = Some(entry);
    }

    /// The connection leaves for a worker.
    pub(super) fn send_away(&mut self, key: usize) -> Option<Entry> {
        let entry = self.entries.get_mut(key).and_then(Option::take)?;
        self.away[key] = Some(super::Away {
            stirred: entry.client.stirred.clone(),
            cancel: entry.client.cancel.clone(),
            token: entry.client.token(),
        });
        Some(entry)
    }

    /// The epoll token of the connection at `key` now, held here or by a worker.
    pub(super) fn token_of(&self, key: usize) -> Option<usize> {
        match self.entries.get(key).and_then(Option::as_ref) {
            Some(e) => Some(e.client.token()),
            None => self.away.get(key).and_then(Option::as_ref).map(|a| a.token),
        }
    }

    pub(super) fn entry(&mut self, key: usize) -> Option<&mut Entry> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    /// Closes a connection the front end holds (the kernel drops its epoll registration).
    pub(super) fn close(&mut self, key: usize) {
        if let Some(slot) = self.entries.get_mut(key) {
            *slot = None;
        }
    }

    /// Writes an answer without blocking; what the socket does not take now goes out as it
    /// drains. True if the connection stays here, ready for its next request.
    pub(super) fn send(&mut self, key: usize, bytes: &[u8], keep: bool) -> bool {
        let cfg = self.shared.config();
        let keep = keep && !self.shared.draining(); // a drain closes kept-alive connections
        let Some(e) = self.entry(key) else {
            return false;
        };
        let Ok(n) = e.client.io.try_send(bytes) else {
            self.close(key);
            return false;
        };
        if n == bytes.len() {
            if keep {
                e.wait_for_request(&cfg, false);
                return true;
            }
            self.closed_by_sluice(key);
            return false;
        }
        e.out = bytes[n..].to_vec();
        e.close_after = !keep;
        e.deadline = Instant::now() + e.client.io.io_timeout;
        let held = self.shared.begin_request(); // a drain waits for it
        if let Some(e) = self.entry(key) {
            e.client.delivering.get_or_insert(held);
        }
        self.interest(key, Interest::READABLE | Interest::WRITABLE);
        false
    }

    /// The socket took more of a pending answer.
    pub(super) fn flush(&mut self, key: usize) {
        let cfg = self.shared.config();
        let Some(e) = self.entry(key) else {
            return;
        };
        let Ok(n) = e.client.io.try_send(&e.out) else {
            return self.close(key);
        };
        e.out.drain(..n);
        if !e.out.is_empty() {
            return;
        }
        e.out = Vec::new();
        e.client.delivering = None;
        if e.close_after {
            self.interest(key, Interest::READABLE);
            return self.closed_by_sluice(key);
        }
        e.wait_for_request(&cfg, false);
        self.interest(key, Interest::READABLE);
        if !self.close_if_idle(key) {
            self.advance(key);
        }
    }

    /// sluice's last answer is out: close now, or gracefully if the client may still be
    /// sending a body.
    fn closed_by_sluice(&mut self, key: usize) {
        match self.entry(key) {
            Some(e) if e.linger_on_close => self.linger(key),
            Some(e) => {
                let _ = e.client.io.stream().shutdown(std::net::Shutdown::Write);
                self.close(key);
            }
            None => {}
        }
    }

    /// Closes sluice's side after its last answer and drains what the client still sends.
    pub(super) fn linger(&mut self, key: usize) {
        let Some(e) = self.entry(key) else {
            return;
        };
        if !e.lingering {
            let _ = e.client.io.stream().shutdown(std::net::Shutdown::Write);
            e.lingering = true;
            e.head_begun = false;
            e.deadline = Instant::now() + LINGER;
            // A drain waits for it (at most `LINGER`): sluice exiting now would close the
            // socket with the client's bytes unread — the reset the linger is there to avoid.
            let held = self.shared.begin_request();
            if let Some(e) = self.entry(key) {
                e.client.delivering.get_or_insert(held);
            }
        }
        let Some(e) = self.entry(key) else {
            return;
        };
        let mut sink = [0u8; 4096];
        loop {
            match recv_now(e.client.io.stream(), &mut sink) {
                Ok(0) => return self.close(key),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(key),
            }
        }
    }

    pub(super) fn interest(&mut self, key: usize, interest: Interest) {
        let Some(e) = self.entries.get(key).and_then(Option::as_ref) else {
            return;
        };
        let (fd, token) = (e.client.io.stream().as_raw_fd(), e.client.token());
        if self
            .poll
            .registry()
            .reregister(&mut SourceFd(&fd), Token(token), interest)
            .is_err()
        {
            self.close(key);
        }
    }
}
