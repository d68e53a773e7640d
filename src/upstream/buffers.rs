//! The read and write buffers of one upstream connection, sized to what a proxy needs and held
//! only while used. ureq's own (`LazyBuffers`) allocate the whole input and output size on first
//! use and keep both for the connection's life, idle in the pool included. Here:
//! - the input buffer starts at `INPUT_START` (a usual response head) and doubles, up to
//!   `INPUT_MAX`, when a read fills it — a long head (one that does not fit is refused:
//!   `RESPONSE_HEAD_MAX`), or a body arriving faster than it is taken, which
//!   then moves in reads of up to 64 KiB;
//! - the output buffer (which must hold the longest request line or header line) exists only
//!   while a request is written: it is freed when the connection waits for the response. A
//!   request without a body gets one sized to its head (`OutputSize`), not the whole 16 KiB:
//!   a new buffer is zeroed, and zeroing 16 KiB per request was a fifth of sluice's
//!   instructions (docs/PERFORMANCE.md);
//! - both are freed when the connection goes back to the pool (`release`); a first-size input
//!   buffer and an output buffer of at most 4 KiB are kept by the thread (one of each per
//!   worker) for its next exchange, so that a usual request allocates and zeroes neither.
//!
//! So a request waiting on a slow upstream holds a few KiB here, not 32, and an idle pooled
//! connection none (docs/PERFORMANCE.md "Memory").

use std::cell::Cell;

use ureq::unversioned::transport::Buffers;

/// The input buffer's first size.
pub const INPUT_START: usize = 2 * 1024;
/// The input buffer's largest size: a large body is read 64 KiB at a time (as ureq's own
/// buffer grows to; 16 KiB reads cost a third more syscalls on 1 MiB responses).
pub const INPUT_MAX: usize = 64 * 1024;
/// The largest response head sluice accepts (ureq's `max_response_header_size`): 64 KiB, what
/// the Python service's http.client took per line (a large `Set-Cookie` or CSP fits); nginx's
/// default is 4–8 KiB. A longer one is a 502 `upstream_error` that the breaker does not count
/// (`classify.rs`). It is the read buffer's largest size: the buffer starts at 2 KiB and grows
/// only when filled, so an idle pooled connection holds none of it.
pub const RESPONSE_HEAD_MAX: usize = INPUT_MAX;
/// ureq reads a request body into the input buffer's free part before writing it out: at least
/// this much room is made (ureq's own minimum).
const MIN_TMP: usize = 10 * 1024;

thread_local! {
    static OUTPUT_SIZE: Cell<Option<usize>> = const { Cell::new(None) };
    /// One first-size input buffer, freed by this thread's last exchange, for its next: a
    /// 2 KiB allocation is past the allocator's per-thread cache, so each would take a lock.
    static SPARE_INPUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The output buffer of this thread's last exchange, if at most `SPARE_OUTPUT_MAX`, for its
    /// next: not allocated and zeroed again per request.
    static SPARE_OUTPUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest output buffer a thread keeps for its next exchange (a usual request head's is
/// 1 KiB: `OutputSize`); a larger one is freed, so that a worker holds at most this much.
const SPARE_OUTPUT_MAX: usize = 4 * 1024;

/// While it lives, the output buffers the worker thread's upstream connections allocate are at
/// most `size` bytes (the thread's spare, reused rather than allocated, may be larger — up to
/// `SPARE_OUTPUT_MAX`): set by an attempt that knows how much it will write (a request head
/// with no body). Restores the size before when dropped.
pub struct OutputSize(Option<usize>);

impl OutputSize {
    pub fn at_most(size: usize) -> OutputSize {
        OutputSize(OUTPUT_SIZE.with(|s| s.replace(Some(size.max(1)))))
    }
}

impl Drop for OutputSize {
    fn drop(&mut self) {
        OUTPUT_SIZE.with(|s| s.set(self.0));
    }
}

/// An output buffer of `size` bytes or the thread's `OutputSize` if smaller: the thread's spare
/// if that is at least as large (its old bytes are never sent: only what ureq writes is), else a
/// new one, zeroed.
fn new_output(size: usize) -> Vec<u8> {
    let cap = OUTPUT_SIZE.with(Cell::get).unwrap_or(size);
    let want = size.min(cap);
    let spare = SPARE_OUTPUT.take();
    if spare.len() >= want {
        return spare;
    }
    SPARE_OUTPUT.set(spare);
    vec![0; want]
}

#[derive(Debug)]
pub struct SlimBuffers {
    input: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// The free length last offered for a read; a read that filled it asks for more room.
    offered: usize,
    grow: bool,
    input_max: usize,
    output: Vec<u8>,
    output_size: usize,
    progress: bool,
}

impl SlimBuffers {
    pub fn new(input_max: usize, output_size: usize) -> Self {
        SlimBuffers {
            input: Vec::new(),
            filled: 0,
            consumed: 0,
            offered: 0,
            grow: false,
            input_max: input_max.max(1),
            output: Vec::new(),
            output_size: output_size.max(1),
            progress: false,
        }
    }

    /// The request is written: its buffer is not needed until the next one (a small one is
    /// kept by the thread for its next exchange).
    pub fn release_output(&mut self) {
        let output = std::mem::take(&mut self.output);
        if !output.is_empty() && output.len() <= SPARE_OUTPUT_MAX {
            SPARE_OUTPUT.with(|spare| {
                let kept = spare.take();
                spare.set(if kept.len() >= output.len() {
                    kept
                } else {
                    output
                });
            });
        }
    }

    /// Between exchanges (the connection goes back to the pool): frees both buffers. Unread
    /// input, which makes the connection unfit for reuse anyway, is kept.
    pub fn release(&mut self) {
        self.release_output();
        if self.consumed == self.filled {
            let first = std::mem::take(&mut self.input);
            if first.len() == INPUT_START {
                SPARE_INPUT.set(first); // for this thread's next exchange
            }
            self.filled = 0;
            self.consumed = 0;
            self.grow = false;
            self.progress = false;
        }
    }

    /// The bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.input.len() + self.output.len()
    }

    /// Moves unconsumed input to the front when that frees room (as ureq's own buffer does).
    fn shift(&mut self) {
        if self.consumed == 0 {
            return;
        }
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        } else if self.filled > self.input.len() / 2 {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    fn resize_input(&mut self, len: usize) {
        if self.input.is_empty() && len == INPUT_START {
            self.input = SPARE_INPUT.take();
        }
        if len > self.input.len() {
            self.input.resize(len, 0);
        }
    }
}

impl Buffers for SlimBuffers {
    fn output(&mut self) -> &mut [u8] {
        if self.output.is_empty() {
            self.output = new_output(self.output_size);
        }
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.shift();
        let len = self.input.len();
        if len == 0 {
            self.resize_input(INPUT_START.min(self.input_max));
        } else if (self.grow || self.filled == len) && len < self.input_max {
            self.resize_input((len * 2).min(self.input_max));
        }
        self.grow = false;
        self.offered = self.input.len() - self.filled;
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled = (self.filled + amount).min(self.input.len());
        self.grow = amount > 0 && amount == self.offered;
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed = (self.consumed + amount).min(self.filled);
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.shift();
        self.resize_input(self.filled + MIN_TMP);
        if self.output.is_empty() {
            self.output = new_output(self.output_size);
        }
        (&mut self.input[self.filled..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &mut SlimBuffers, data: &[u8]) -> usize {
        let buf = b.input_append_buf();
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        b.input_appended(n);
        n
    }

    #[test]
    fn the_input_buffer_starts_small_and_grows_to_its_limit_when_filled() {
        let mut b = SlimBuffers::new(16 * 1024, 16 * 1024);
        assert_eq!(b.held(), 0, "nothing until used");
        assert_eq!(read(&mut b, b"HTTP/1.1 200 OK\r\n"), 17);
        assert_eq!(
            b.input.len(),
            INPUT_START,
            "a usual head fits the first size"
        );
        // A long head: each read fills what is offered; the buffer doubles up to the limit.
        let long = vec![b'x'; 40 * 1024];
        let mut got = 17;
        while b.input.len() - b.filled > 0 || b.input.len() < 16 * 1024 {
            let n = read(&mut b, &long);
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(b.input.len(), 16 * 1024, "never past the limit");
        assert_eq!(got, 16 * 1024);
        assert_eq!(b.input().len(), 16 * 1024);
        assert!(
            b.input_append_buf().is_empty(),
            "full: ureq refuses the head"
        );
    }

    #[test]
    fn a_body_moving_fast_gets_larger_reads_and_everything_is_freed_between_exchanges() {
        let mut b = SlimBuffers::new(16 * 1024, 8 * 1024);
        let chunk = vec![7u8; 64 * 1024];
        let mut sizes = Vec::new();
        for _ in 0..5 {
            let n = read(&mut b, &chunk);
            sizes.push(n);
            assert!(b.input().iter().all(|&x| x == 7));
            let all = b.input().len();
            b.input_consume(all);
        }
        let s = INPUT_START;
        assert_eq!(sizes, [s, s * 2, s * 4, s * 8, s * 8]);
        assert_eq!(s * 8, 16 * 1024);
        assert_eq!(b.output().len(), 8 * 1024);
        b.release_output();
        assert_eq!(b.held(), 16 * 1024);
        b.release();
        assert_eq!(b.held(), 0);
        // Next exchange: small again.
        read(&mut b, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(b.input.len(), INPUT_START);
    }

    #[test]
    fn unconsumed_input_survives_shifts_growth_and_release() {
        let mut b = SlimBuffers::new(16 * 1024, 1024);
        read(&mut b, &[1u8; INPUT_START]);
        b.input_consume(INPUT_START - 96);
        read(&mut b, &[2u8; 100]);
        let mut want = vec![1u8; 96];
        want.extend([2u8; 100]);
        assert_eq!(b.input(), &want[..]);
        b.release();
        assert_eq!(b.input(), &want[..], "kept: the connection is not reused");
        let (tmp, out) = b.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP && out.len() == 1024);
        assert_eq!(b.input(), &want[..]);
    }

    #[test]
    fn an_output_size_caps_the_buffers_allocated_while_it_lives() {
        let mut b = SlimBuffers::new(16 * 1024, 8 * 1024);
        {
            let _small = OutputSize::at_most(1024);
            assert_eq!(b.output().len(), 1024);
            b.release_output();
            let _larger = OutputSize::at_most(64 * 1024);
            assert_eq!(b.output().len(), 8 * 1024, "never above the agent's size");
            b.release_output();
        }
        assert_eq!(b.output().len(), 8 * 1024, "restored when dropped");
    }

    #[test]
    fn a_small_output_buffer_is_reused_by_the_threads_next_exchange_a_large_one_is_not() {
        let _head = OutputSize::at_most(1024);
        let mut first = SlimBuffers::new(16 * 1024, 16 * 1024);
        first.output()[..5].copy_from_slice(b"stale");
        let at = first.output().as_ptr();
        first.release_output();
        assert_eq!(first.held(), 0, "the connection holds none while it waits");
        let mut next = SlimBuffers::new(16 * 1024, 16 * 1024);
        assert_eq!(
            next.output().as_ptr(),
            at,
            "the same buffer, not a new one zeroed"
        );
        assert_eq!(next.output().len(), 1024);
        next.release_output();
        drop(_head);
        let mut large = SlimBuffers::new(16 * 1024, 16 * 1024);
        assert_eq!(
            large.output().len(),
            16 * 1024,
            "a larger one is made when needed"
        );
        large.release_output();
        assert!(
            SPARE_OUTPUT.take().len() <= SPARE_OUTPUT_MAX,
            "and not kept"
        );
    }
}
