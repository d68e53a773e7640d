//! How a worker writes a response to its client without being held by a client that reads
//! slowly or not at all (README "What can hold a worker"), decided here for every response a
//! worker writes — relayed ones and sluice's own answers: what the socket takes at once is
//! sent; what it does not is held, up to a cap, and handed to the front end with the
//! connection (`ClientConn::leave_unsent`), which sends it as the client reads (or closes the
//! connection when its answers stall); past the cap the worker writes the rest itself,
//! blocking under the minimum rate (`Pace`). sluice's own answers (small, bounded bytes) are
//! always held whole (`Delivery::whole`).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::conn::ClientConn;
use super::pace::Pace;

/// Writes a response to a worker's client: without waiting while the socket takes it; holding
/// what it does not take, up to `cap` bytes, for the front end; past that, blocking under the
/// minimum rate.
pub struct Delivery<'a> {
    conn: &'a mut ClientConn,
    held: Vec<u8>,
    cap: usize,
    /// Set once the held bytes would pass `cap`: the worker writes the rest itself.
    paced: Option<(Pace, u64)>,
    grace: Duration,
    min_rate: u64,
}

impl<'a> Delivery<'a> {
    /// Holds up to `cap` bytes (`client_buffer`) for the front end; past that the client must
    /// take the response at `min_rate` after `grace`.
    pub fn new(conn: &'a mut ClientConn, cap: usize, grace: Duration, min_rate: u64) -> Self {
        Delivery {
            conn,
            held: Vec::new(),
            cap,
            paced: None,
            grace,
            min_rate,
        }
    }

    /// For a response small and bounded (sluice's own answer): whatever the socket does not
    /// take is held, all of it; the worker never waits on the client.
    pub fn whole(conn: &'a mut ClientConn) -> Self {
        Delivery::new(conn, usize::MAX, Duration::ZERO, 0)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some((pace, written)) = &mut self.paced {
            return self.conn.write_paced(bytes, pace, written);
        }
        if !self.held.is_empty() {
            let n = self.conn.try_send(&self.held)?;
            self.held.drain(..n);
        }
        let rest = if self.held.is_empty() {
            &bytes[self.conn.try_send(bytes)?..]
        } else {
            bytes
        };
        if self.held.len().saturating_add(rest.len()) <= self.cap {
            self.held.extend_from_slice(rest);
            return Ok(());
        }
        let pace = Pace::new(Instant::now(), self.grace, self.min_rate);
        let mut written = 0;
        let held = std::mem::take(&mut self.held);
        self.conn.write_paced(&held, &pace, &mut written)?;
        self.conn.write_paced(rest, &pace, &mut written)?;
        self.paced = Some((pace, written));
        Ok(())
    }

    /// True once the worker had to wait on the client (it fell more than `cap` behind): the
    /// upstream was kept waiting at the client's pace.
    pub fn waited_on_client(&self) -> bool {
        self.paced.is_some()
    }

    /// The response is complete (or cut short): what the client has not taken stays with the
    /// connection for the front end; `close` after it.
    pub fn finish(self, close: bool) {
        if !self.held.is_empty() {
            self.conn.leave_unsent(self.held, close);
        }
    }
}

impl Write for Delivery<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
