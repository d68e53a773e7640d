//! One client connection's socket with its read buffer: reading request heads (non-blocking for
//! the front end's event loop; blocking under idle and header deadlines for the test upstream),
//! and `BufRead` for bodies. Bytes past the current request stay buffered, so
//! pipelined requests are served in order. Every read or write that may block goes through the
//! socket's `MarkedStream` (`runnable.rs`), so a worker blocked on its client counts as not
//! running.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::body::{BodyError, RequestBody};
use super::parse::{Framing, HeadError, RequestHead};
use super::readbuf::{ReadBuf, INITIAL_BUFFER};
use crate::http::pace::Pace;
use crate::runnable::MarkedStream;

/// The read buffer's size while a request body is read through it.
const BODY_BUFFER: usize = 16 * 1024;
/// A body read at least this large goes straight from the socket, past the buffer.
const DIRECT_READ: usize = 4096;

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadHeadError {
    /// The client closed, or stayed idle past its deadline, with no request begun: close quietly.
    Closed,
    /// Part of a head arrived, but not all of it within the header timeout: 408.
    Timeout,
    /// The head is malformed or over a limit: 400/414/431.
    Invalid(HeadError),
}

/// Where a non-blocking read of a request head got to.
#[derive(Debug)]
pub enum HeadPoll {
    /// A whole head: the bytes after it stay buffered for the body or the next request.
    Ready(RequestHead),
    /// The socket has nothing more for now.
    Pending,
    /// The client closed (or the socket failed).
    Closed,
    /// The head is malformed or over a limit: 400/414/431.
    Invalid(HeadError),
}

/// How long to wait for a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadDeadlines {
    /// For the first byte of the request.
    pub first_byte: Duration,
    /// For the whole head, counted from the first byte.
    pub whole_head: Duration,
    pub max_head_bytes: usize,
}

pub struct ClientConn {
    stream: MarkedStream,
    rb: ReadBuf,
    /// The socket's current read timeout, so it is set only when it changes (a syscall).
    read_timeout: Option<Duration>,
    pub peer: SocketAddr,
    /// How long one read of a request body, or one write of a response, may block.
    pub io_timeout: Duration,
    /// The minimum rate the client must keep while a worker reads its body from the socket.
    read_pace: Option<Paced>,
    /// Response bytes the client has not taken yet, for the front end to send as it drains,
    /// and whether the connection closes after them.
    unsent: (Vec<u8>, bool),
}

/// A pace and the bytes moved under it.
#[derive(Clone, Copy, Debug)]
struct Paced {
    pace: Pace,
    bytes: u64,
}

/// Where a non-blocking read of a buffered request body got to (`ClientConn::poll_body`).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyPoll {
    /// The whole body is in the buffer: a worker will not wait on the client for it.
    Complete,
    /// More is to come.
    Pending,
    /// Larger than the buffer: a worker streams it.
    Stream,
    /// The client closed (or the socket failed).
    Closed,
}

/// Reads a connection's bytes: buffered ones first, then the socket (under the read pace).
pub struct Reader<'a> {
    rb: &'a mut ReadBuf,
    stream: &'a MarkedStream,
    pace: Option<&'a mut Paced>,
    read_timeout: &'a mut Option<Duration>,
    io_timeout: Duration,
}

impl ClientConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, io_timeout: Duration) -> Self {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(io_timeout));
        ClientConn {
            stream: MarkedStream::new(stream),
            read_timeout: None,
            rb: ReadBuf {
                buf: Vec::new(),
                pos: 0,
                end: 0,
                scanned: 0,
                head_start: None,
            },
            peer,
            io_timeout,
            read_pace: None,
            unsent: (Vec::new(), false),
        }
    }

    /// The socket, for its options and the calls that never wait (its blocking reads and
    /// writes are this type's, marked).
    pub fn stream(&self) -> &TcpStream {
        self.stream.socket()
    }

    /// A `Write` for the client socket (blocking, marked).
    pub fn writer(&self) -> &MarkedStream {
        &self.stream
    }

    /// Writes all of `bytes` to the client, blocking (the test upstream's; a worker's responses
    /// go through `delivery.rs`, never blocking on a client that does not read).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        (&self.stream).write_all(bytes)
    }

    /// The reader half and the socket (to write an interim response), borrowed together.
    pub fn split(&mut self) -> (Reader<'_>, &MarkedStream) {
        (
            Reader {
                rb: &mut self.rb,
                stream: &self.stream,
                pace: self.read_pace.as_mut(),
                read_timeout: &mut self.read_timeout,
                io_timeout: self.io_timeout,
            },
            &self.stream,
        )
    }

    /// From now on, body reads from the socket must keep up `pace` (`None`: only the per-read
    /// `io_timeout`).
    pub fn pace_reads(&mut self, pace: Option<Pace>) {
        self.read_pace = pace.map(|pace| Paced { pace, bytes: 0 });
    }

    /// Reads, without blocking, what the socket has of a request body whose head was just
    /// parsed, until the whole body is buffered, the buffer's `limit` is passed, or the socket
    /// has no more for now.
    pub fn poll_body(&mut self, framing: Framing, limit: usize) -> BodyPoll {
        self.rb.compact();
        // Chunk-size lines and CRLFs travel with the data: room for them on top of `limit`.
        let room = limit.saturating_mul(2) + INITIAL_BUFFER;
        loop {
            let rb = &mut self.rb;
            match buffered_body(&rb.buf[rb.pos..rb.end], framing, limit) {
                Buffered::Complete | Buffered::Malformed => return BodyPoll::Complete,
                Buffered::TooLarge => return BodyPoll::Stream,
                Buffered::Incomplete if rb.end - rb.pos >= room => return BodyPoll::Stream,
                Buffered::Incomplete => {}
            }
            if rb.end == rb.buf.len() {
                let grown = (rb.buf.len() * 2).clamp(INITIAL_BUFFER, rb.pos + room);
                rb.buf.resize(grown, 0);
            }
            match recv_now(self.stream.socket(), &mut rb.buf[rb.end..]) {
                Ok(0) => return BodyPoll::Closed,
                Ok(n) => rb.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return BodyPoll::Pending,
                Err(_) => return BodyPoll::Closed,
            }
        }
    }

    /// True if the body of the request just parsed is all in the buffer already.
    pub fn body_buffered(&self, framing: Framing) -> bool {
        let data = &self.rb.buf[self.rb.pos..self.rb.end];
        matches!(
            buffered_body(data, framing, usize::MAX),
            Buffered::Complete | Buffered::Malformed
        )
    }

    /// Writes what the socket takes now without waiting (the socket may be blocking); returns
    /// how much it took.
    pub fn try_send(&self, bytes: &[u8]) -> io::Result<usize> {
        let sock = socket2::SockRef::from(self.stream.socket());
        let mut n = 0;
        while n < bytes.len() {
            match sock.send_with_flags(&bytes[n..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Writes all of `bytes`, blocking, each write under what is left of `pace` (at most
    /// `io_timeout`); `written` counts the bytes moved under that pace.
    pub fn write_paced(&mut self, bytes: &[u8], pace: &Pace, written: &mut u64) -> io::Result<()> {
        let mut current = None;
        let mut n = 0;
        while n < bytes.len() {
            let wait = pace
                .wait(*written, Instant::now(), self.io_timeout)
                .ok_or(io::ErrorKind::TimedOut)?;
            if current != Some(wait) {
                self.stream.socket().set_write_timeout(Some(wait))?;
                current = Some(wait);
            }
            match (&self.stream).write(&bytes[n..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    n += k;
                    *written += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if current.is_some_and(|c| c != self.io_timeout) {
            self.stream
                .socket()
                .set_write_timeout(Some(self.io_timeout))?;
        }
        Ok(())
    }

    /// Keeps response bytes the client has not taken, for the front end to send (`delivery.rs`);
    /// `close`: the connection closes after them.
    pub fn leave_unsent(&mut self, bytes: Vec<u8>, close: bool) {
        self.unsent = (bytes, close);
    }

    /// The response bytes a worker left unsent, and whether to close after them.
    pub fn take_unsent(&mut self) -> (Vec<u8>, bool) {
        std::mem::take(&mut self.unsent)
    }

    /// True if a worker left the front end something to do: response bytes to send, or a
    /// graceful close.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.0.is_empty() || self.unsent.1
    }

    /// True if request bytes are already buffered (a pipelined request is waiting).
    pub fn has_buffered(&self) -> bool {
        self.rb.pos < self.rb.end
    }

    /// Reads and parses the next request head.
    pub fn read_head(&mut self, d: HeadDeadlines) -> Result<RequestHead, ReadHeadError> {
        self.rb.compact();
        let started = Instant::now();
        let mut head_started = (self.rb.end > 0).then_some(started);
        loop {
            let rb = &mut self.rb;
            match rb.try_head(d.max_head_bytes) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(ReadHeadError::Invalid(e)),
            }
            let deadline = match head_started {
                Some(t) => t + d.whole_head,
                None => started + d.first_byte,
            };
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|l| !l.is_zero())
            else {
                return Err(timed_out(head_started.is_some()));
            };
            // Waiting for a new request: the whole first-byte allowance, the same value every
            // time (no syscall). Once a head has begun: exactly what is left of its allowance.
            let wait = if head_started.is_none() && left + Duration::from_millis(5) >= d.first_byte
            {
                d.first_byte
            } else {
                left
            };
            if !rb.room_for_head(d.max_head_bytes) {
                return Err(ReadHeadError::Invalid(HeadError::TooLarge));
            }
            match self.read_blocking(wait) {
                Got::Bytes => {
                    head_started.get_or_insert_with(Instant::now);
                }
                Got::Timeout => return Err(timed_out(head_started.is_some())),
                Got::Closed => return Err(ReadHeadError::Closed),
            }
        }
    }

    /// Reads what the socket has now (without blocking) and parses a head if one is complete. While
    /// nothing is buffered the read buffer is freed, so an idle connection holds no buffer.
    pub fn poll_head(&mut self, max_head_bytes: usize) -> HeadPoll {
        self.rb.compact();
        loop {
            let rb = &mut self.rb;
            match rb.try_head(max_head_bytes) {
                Ok(Some(head)) => return HeadPoll::Ready(head),
                Ok(None) => {}
                Err(e) => return HeadPoll::Invalid(e),
            }
            if !rb.room_for_head(max_head_bytes) {
                return HeadPoll::Invalid(HeadError::TooLarge);
            }
            match recv_now(self.stream.socket(), &mut rb.buf[rb.end..]) {
                Ok(0) => return HeadPoll::Closed,
                Ok(n) => rb.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if rb.end == 0 {
                        rb.buf = Vec::new();
                    }
                    return HeadPoll::Pending;
                }
                Err(_) => return HeadPoll::Closed,
            }
        }
    }

    /// Waits (blocking, a worker) up to about `wait` for the next request head: `Pending` if it
    /// is not all here by then (what arrived stays buffered, for the front end to go on with),
    /// `Invalid` with the bytes left unparsed for the front end to refuse. Each read waits at
    /// most `wait`, and no read starts after `wait` has passed: a client can hold the caller
    /// for at most twice `wait`.
    pub fn await_head(&mut self, wait: Duration, max_head_bytes: usize) -> HeadPoll {
        self.rb.compact();
        let deadline = Instant::now() + wait;
        loop {
            let rb = &mut self.rb;
            match rb.try_head(max_head_bytes) {
                Ok(Some(head)) => return HeadPoll::Ready(head),
                Ok(None) => {}
                Err(e) => {
                    rb.scanned = 0;
                    return HeadPoll::Invalid(e);
                }
            }
            if Instant::now() >= deadline {
                rb.scanned = 0;
                return HeadPoll::Pending;
            }
            if !rb.room_for_head(max_head_bytes) {
                rb.scanned = 0;
                return HeadPoll::Invalid(HeadError::TooLarge);
            }
            // The same value every time: set once per connection, not per request (a syscall).
            match self.read_blocking(wait) {
                Got::Bytes => {}
                Got::Timeout => {
                    self.rb.scanned = 0;
                    return HeadPoll::Pending;
                }
                Got::Closed => return HeadPoll::Closed,
            }
        }
    }

    /// One blocking read into the buffer, waiting at most `wait`.
    fn read_blocking(&mut self, wait: Duration) -> Got {
        set_timeout(self.stream.socket(), &mut self.read_timeout, wait);
        let rb = &mut self.rb;
        loop {
            match (&self.stream).read(&mut rb.buf[rb.end..]) {
                Ok(0) => return Got::Closed,
                Ok(n) => {
                    rb.end += n;
                    return Got::Bytes;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    /// Puts the head parsed last back in the buffer (before anything of its body was read),
    /// for the front end to read again. False if there is none to put back.
    pub fn unread_head(&mut self) -> bool {
        let Some(start) = self.rb.head_start.take() else {
            return false;
        };
        self.rb.pos = start;
        self.rb.scanned = 0;
        true
    }

    /// Switches to body reading: reads block for at most `io_timeout`.
    pub fn prepare_body_reads(&mut self) {
        set_timeout(
            self.stream.socket(),
            &mut self.read_timeout,
            self.io_timeout,
        );
    }
}

/// What one blocking read brought.
enum Got {
    Bytes,
    Timeout,
    Closed,
}

/// How much of a request body the buffer holds.
enum Buffered {
    Complete,
    Incomplete,
    /// Its (decoded) size is over the limit.
    TooLarge,
    /// Broken framing: the worker reads it from the buffer and refuses it at once.
    Malformed,
}

fn buffered_body(data: &[u8], framing: Framing, limit: usize) -> Buffered {
    match framing {
        Framing::None => Buffered::Complete,
        Framing::Length(n) if n > limit as u64 => Buffered::TooLarge,
        Framing::Length(n) if data.len() as u64 >= n => Buffered::Complete,
        Framing::Length(_) => Buffered::Incomplete,
        Framing::Chunked => {
            let mut src = data;
            let mut body = RequestBody::new(&mut src, Framing::Chunked, limit as u64);
            // Small: a 4 KiB array here made every caller touch a page of its worker's stack
            // (Rust probes each page of a large frame), chunked body or not.
            let mut sink = [0u8; 512];
            loop {
                match body.read(&mut sink) {
                    Ok(0) if body.is_complete() => return Buffered::Complete,
                    Ok(0) => return Buffered::Incomplete,
                    Ok(_) => {}
                    Err(_) => {
                        return match body.failure {
                            Some(BodyError::Truncated) => Buffered::Incomplete,
                            Some(BodyError::TooLarge) => Buffered::TooLarge,
                            _ => Buffered::Malformed,
                        }
                    }
                }
            }
        }
    }
}

/// One read that does not wait, whatever the socket's mode (`MSG_DONTWAIT`). Client sockets
/// stay in blocking mode all their life: the front end reads them with this, a worker with
/// plain blocking reads, so a connection changing hands costs no mode switch (two `ioctl`s
/// per request before; docs/PERFORMANCE.md).
pub fn recv_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain `recv(2)` into a buffer this function borrows mutably for the call, with
    // its true length; the kernel writes at most `buf.len()` bytes. (No safe wrapper takes
    // `&mut [u8]` with flags.)
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn set_timeout(stream: &TcpStream, current: &mut Option<Duration>, want: Duration) {
    if *current != Some(want) && stream.set_read_timeout(Some(want)).is_ok() {
        *current = Some(want);
    }
}

fn timed_out(head_started: bool) -> ReadHeadError {
    if head_started {
        ReadHeadError::Timeout
    } else {
        ReadHeadError::Closed
    }
}

impl Reader<'_> {
    /// One read from the socket, under the pace if there is one.
    fn read_socket(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(p) = self.pace.as_deref_mut() {
            let wait = p
                .pace
                .wait(p.bytes, Instant::now(), self.io_timeout)
                .ok_or(io::ErrorKind::TimedOut)?;
            set_timeout(self.stream.socket(), self.read_timeout, wait);
        }
        loop {
            match self.stream.read(out) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Body bytes delivered count towards the pace, whether they came buffered or not.
    fn delivered(&mut self, n: usize) {
        if let Some(p) = self.pace.as_deref_mut() {
            p.bytes += n as u64;
        }
    }
}

impl Read for Reader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.rb.pos == self.rb.end && out.len() >= DIRECT_READ {
            let n = self.read_socket(out)?;
            self.delivered(n);
            return Ok(n);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Reader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.rb.pos == self.rb.end {
            let mut buf = std::mem::take(&mut self.rb.buf);
            if buf.len() < BODY_BUFFER {
                buf.resize(BODY_BUFFER, 0);
            }
            let read = self.read_socket(&mut buf);
            self.rb.buf = buf;
            self.rb.pos = 0;
            self.rb.end = 0;
            self.rb.end = read?;
        }
        Ok(&self.rb.buf[self.rb.pos..self.rb.end])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.rb.end - self.rb.pos);
        self.rb.pos += n;
        self.delivered(n);
    }
}
