//! Which workers can run now. A worker inside a call that may block on the network (an upstream
//! read, write or connect, a client read or paced write, a name look-up, a retry's back-off) is
//! not running. The job queue (`pool/queue.rs`) wakes a sleeping worker for a new request only
//! while fewer than a few workers run, so that a stream of fast requests is served by the workers
//! already awake instead of waking a new one for each (a context switch per request); a worker
//! that is about to block while requests wait wakes one in its place (docs/ARCHITECTURE.md
//! "Workers awake"). Here: the marker, who is told, and the types that put it around every call
//! they make that may block — a worker's sockets are `MarkedStream`s and it sleeps with `sleep`,
//! so a new blocking call cannot forget the marker. The lowest floor of the crate: `http/` uses
//! it, it imports nothing of sluice.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Told when the current thread blocks and resumes.
pub trait Runnable: Send + Sync {
    fn blocks(&self);
    fn resumes(&self);
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn Runnable>>> = const { RefCell::new(None) };
}

/// From now on, this thread's blocking calls are reported to `to`.
pub fn register(to: Arc<dyn Runnable>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(to));
}

/// Runs `f`, which may block, with this thread counted as not running (also if `f` panics).
/// For the types below and the name look-up's (`upstream/resolve.rs`), not for call sites.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(to) = current.as_deref() else {
            return f();
        };
        struct Resume<'a>(&'a dyn Runnable);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.resumes();
            }
        }
        to.blocks();
        let _resume = Resume(to);
        f()
    })
}

/// Sleeps `d`, counted as not running (a retry's back-off).
pub fn sleep(d: Duration) {
    blocking(|| std::thread::sleep(d));
}

/// A blocking socket whose every read, write and connect is marked: the only way the stages
/// read or write a client or upstream socket (`http::conn::ClientConn`, the upstream
/// transport). `Read` and `Write` are implemented for `&MarkedStream`, as for `&TcpStream`.
#[derive(Debug)]
pub struct MarkedStream(TcpStream);

impl MarkedStream {
    pub fn new(stream: TcpStream) -> Self {
        MarkedStream(stream)
    }

    /// Connects to `addr`, waiting at most `timeout` if there is one.
    pub fn connect(addr: &SocketAddr, timeout: Option<Duration>) -> io::Result<Self> {
        blocking(|| match timeout {
            Some(t) => TcpStream::connect_timeout(addr, t),
            None => TcpStream::connect(addr),
        })
        .map(MarkedStream)
    }

    /// The socket itself, for its options and the calls that never wait (`MSG_DONTWAIT`,
    /// `shutdown`): a blocking read or write goes through `Read`/`Write` on `&MarkedStream`.
    pub fn socket(&self) -> &TcpStream {
        &self.0
    }

    /// Waits, marked, until a connect started without blocking on this socket ends: its error,
    /// or `TimedOut` past `timeout` (the upstream transport's connect, which a hang-up can cut
    /// short by shutting the socket down).
    pub fn await_connected(&self, timeout: Option<Duration>) -> io::Result<()> {
        blocking(|| await_connected(&self.0, timeout))
    }
}

/// Waits until a non-blocking connect on `stream` ends: its error, `TimedOut` past `timeout`.
fn await_connected(stream: &TcpStream, timeout: Option<Duration>) -> io::Result<()> {
    let until = timeout.map(|t| Instant::now() + t);
    loop {
        let wait_ms = match until {
            None => -1,
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                // Rounded up, so the wait never ends before the timeout.
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }
        };
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `poll(2)` on one descriptor `stream` owns, with a pointer to a local
        // `pollfd` valid for the call and its true count (1). No safe wrapper waits for a
        // connect with a timeout once it has been started.
        let n = unsafe { libc::poll(&mut fd, 1, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue; // the timeout: checked above
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        return Ok(());
    }
}

impl Read for &MarkedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        blocking(|| (&self.0).read(buf))
    }
}

impl Write for &MarkedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        blocking(|| (&self.0).write(buf))
    }

    /// One mark around all the writes it takes.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        blocking(|| (&self.0).write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};

    #[derive(Default)]
    struct Count(AtomicIsize, AtomicIsize);

    impl Runnable for Count {
        fn blocks(&self) {
            self.0.fetch_sub(1, SeqCst);
            self.1.fetch_add(1, SeqCst);
        }
        fn resumes(&self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn blocking_calls_are_reported_in_pairs_even_when_they_panic() {
        assert_eq!(blocking(|| 7), 7, "nothing registered: just runs");
        let count = Arc::new(Count::default());
        register(count.clone());
        assert_eq!(
            blocking(|| count.0.load(SeqCst)),
            -1,
            "not running meanwhile"
        );
        let caught = std::panic::catch_unwind(|| blocking(|| panic!("a bug")));
        assert!(caught.is_err());
        assert_eq!(count.0.load(SeqCst), 0, "resumed after the panic too");
        assert_eq!(blocking(|| blocking(|| count.0.load(SeqCst))), -2);
        assert_eq!(count.0.load(SeqCst), 0);
        assert_eq!(count.1.load(SeqCst), 4);
    }

    #[test]
    fn a_marked_streams_connect_read_write_and_the_sleep_are_each_marked() {
        let count = Arc::new(Count::default());
        register(count.clone());
        let blocks = || count.1.load(SeqCst);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = MarkedStream::connect(&addr, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(blocks(), 1, "connect");
        let (mut peer, _) = listener.accept().unwrap();
        (&s).write_all(b"ab").unwrap();
        assert_eq!((&s).write(b"c").unwrap(), 1);
        assert_eq!(blocks(), 3, "write_all, write");
        peer.write_all(b"x").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!((&s).read(&mut buf).unwrap(), 1);
        assert_eq!(blocks(), 4, "read");
        sleep(Duration::from_millis(1));
        assert_eq!(blocks(), 5, "sleep");
        assert_eq!(count.0.load(SeqCst), 0, "running again after each");
    }
}
