//! The front end's connection table and its non-blocking writer: the connections it holds now
//! (indexed by file descriptor), which ones a worker has, and answers written without blocking
//! — what the socket does not take now goes out as it drains, and no new request is read from
//! that connection until it has.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::Front;
use crate::config::Config;
use crate::pool::handoff::Client;

/// A connection waiting on the front end for its next request, or for its answer to go out.
pub(super) struct Entry {
    pub client: Client,
    /// Past this: an idle connection is closed, a begun head gets 408, a stalled answer is dropped.
    pub deadline: Instant,
    pub head_begun: bool,
    /// Answer bytes the socket has not taken yet; no new request is read until they are out.
    pub out: Vec<u8>,
    pub close_after: bool,
}

impl Entry {
    pub fn waiting(client: Client, cfg: &Config, first: bool) -> Self {
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
    pub fn wait_for_request(&mut self, cfg: &Config, first: bool) {
        self.head_begun = self.client.io.has_buffered();
        let wait = if first || self.head_begun {
            cfg.client_header_timeout
        } else {
            cfg.client_idle_timeout
        };
        self.deadline = Instant::now() + wait;
    }
}

impl Front {
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
        });
        Some(entry)
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
    pub(super) fn flush(&mut self, key: usize) {
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

    pub(super) fn interest(&mut self, key: usize, interest: Interest) {
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
}

/// Writes as much of `bytes` as the non-blocking socket takes now.
pub(super) fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
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
