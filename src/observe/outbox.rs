//! A bounded buffer of log lines and the one thread that writes them out, so that a reader
//! that stalls (a full pipe, a paused container log driver) never stops a worker or the front
//! end: adding a line takes a short lock and never waits on the output; a line that does not
//! fit is dropped and counted. One outbox for stdout (the access log), one for stderr (the log).
//!
//! Not here: what a line says (`log.rs`, `access_log.rs`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

/// Where an outbox's writer thread puts the lines (blocking is fine there).
pub type Output = fn(&[u8]) -> io::Result<()>;

pub struct Outbox {
    name: &'static str,
    /// Bytes the buffer may hold; the writer holds at most as many more while it writes.
    capacity: usize,
    output: Output,
    state: Mutex<State>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// `flush` waits here for the writer to have written everything.
    written: Condvar,
    dropped: AtomicU64,
    writer: Once,
}

struct State {
    buf: Vec<u8>,
    /// The writer is writing a batch taken from `buf`.
    writing: bool,
    /// The writer waits for lines: the next push wakes it.
    waiting: bool,
}

impl Outbox {
    pub const fn new(name: &'static str, capacity: usize, output: Output) -> Self {
        Outbox {
            name,
            capacity,
            output,
            state: Mutex::new(State {
                buf: Vec::new(),
                writing: false,
                waiting: false,
            }),
            lines: Condvar::new(),
            written: Condvar::new(),
            dropped: AtomicU64::new(0),
            writer: Once::new(),
        }
    }

    /// Adds one line (its `parts` in order, the caller ends it with `\n`) for the writer, or
    /// drops and counts it if the buffer has no room. Never waits on the output. False if
    /// dropped.
    pub fn push(&'static self, parts: &[&[u8]]) -> bool {
        self.writer.call_once(|| self.spawn_writer());
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut s = self.lock();
        if s.buf.len() + len > self.capacity {
            drop(s);
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        for p in parts {
            s.buf.extend_from_slice(p);
        }
        let wake = std::mem::replace(&mut s.waiting, false);
        drop(s);
        if wake {
            self.lines.notify_one();
        }
        true
    }

    /// Lines dropped so far: no room in the buffer, or the output failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Waits up to `within` for every line added so far to be written (a clean shutdown); false
    /// if the output did not take them in time.
    pub fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut s = self.lock();
        while !s.buf.is_empty() || s.writing {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .written
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds whole lines.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_writer(&'static self) {
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-{}", self.name))
            .stack_size(64 * 1024)
            .spawn(move || self.write_forever());
        if spawned.is_err() {
            // No writer: the buffer fills and further lines are dropped and counted.
            self.lock().writing = true;
        }
    }

    /// Takes the whole buffer at a time and writes it: one write for many lines.
    fn write_forever(&self) {
        let mut batch = Vec::new();
        loop {
            let mut s = self.lock();
            s.writing = false;
            while s.buf.is_empty() {
                self.written.notify_all();
                s.waiting = true;
                s = self.lines.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            s.writing = true;
            std::mem::swap(&mut s.buf, &mut batch);
            drop(s);
            if (self.output)(&batch).is_err() {
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                self.dropped.fetch_add(lines as u64, Relaxed);
            }
            batch.clear();
            if batch.capacity() > self.capacity {
                batch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    static STALLED: AtomicBool = AtomicBool::new(true);
    static OUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    /// An output that takes nothing while `STALLED`, as a full pipe.
    fn stallable(bytes: &[u8]) -> io::Result<()> {
        while STALLED.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        OUT.lock().unwrap().extend_from_slice(bytes);
        Ok(())
    }

    static BOX: Outbox = Outbox::new("test-outbox", 100, stallable);

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks_the_caller() {
        let line = [b'x'; 9];
        let t = Instant::now();
        let mut kept = 0;
        for _ in 0..1000 {
            if BOX.push(&[&line, b"\n"]) {
                kept += 1;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(1), "pushes never wait");
        assert!(
            (10..=20).contains(&kept),
            "the buffer and one batch: {kept}"
        );
        assert_eq!(BOX.dropped(), 1000 - kept);
        assert!(
            !BOX.flush(Duration::from_millis(20)),
            "the output is stalled"
        );
        STALLED.store(false, Relaxed);
        assert!(BOX.flush(Duration::from_secs(5)), "flushed once it drains");
        let out = OUT.lock().unwrap().clone();
        assert_eq!(out.len() as u64, kept * 10, "every kept line, whole");
        assert!(out.chunks(10).all(|l| l == b"xxxxxxxxx\n"));
        assert!(BOX.push(&[b"after\n"]));
        assert!(BOX.flush(Duration::from_secs(5)));
        assert!(OUT.lock().unwrap().ends_with(b"after\n"));
    }
}
