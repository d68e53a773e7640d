//! A client connection's read buffer: where a request head is searched for (each byte once) and
//! parsed, how it grows (from `INITIAL_BUFFER`, doubling up to the head limit), and how it is
//! compacted and freed between requests so that idle connections hold little. `conn.rs` reads
//! the socket into it.

use super::parse::{parse_head, HeadError, RequestHead};

/// A connection's read buffer's first size (a usual request head fits; a longer one doubles it).
pub(super) const INITIAL_BUFFER: usize = 2048;

/// The read buffer of a connection, apart from the socket so that a body reader and a writer
/// can borrow the connection at the same time.
pub(super) struct ReadBuf {
    pub buf: Vec<u8>,
    pub pos: usize,
    pub end: usize,
    /// Bytes after `pos` already searched for the end of a head: each byte is searched once,
    /// so a head arriving in small pieces costs time linear in its size.
    pub scanned: usize,
    /// Where the head parsed last began, until the buffer moves: `unread_head` puts it back.
    pub head_start: Option<usize>,
}

impl ReadBuf {
    /// Parses the buffered head once it is whole — or once its request line has ended, so an
    /// over-long one is refused at once. Bytes already searched are not searched again.
    pub fn try_head(&mut self, max_head: usize) -> Result<Option<RequestHead>, HeadError> {
        let data = &self.buf[self.pos..self.end];
        let from = self.scanned.saturating_sub(2);
        let fresh = &data[from..];
        let (seen, new) = data.split_at(self.scanned.min(data.len()));
        let line_ended_now = !seen.contains(&b'\n') && new.contains(&b'\n');
        // A head that ends the bytes read (the usual case: one request per read) is seen
        // without scanning them byte by byte.
        let head_ended = fresh.ends_with(b"\n\r\n")
            || fresh.ends_with(b"\n\n")
            || fresh.windows(2).any(|w| w == b"\n\n")
            || fresh.windows(3).any(|w| w == b"\n\r\n");
        self.scanned = data.len();
        let over_line = !data.contains(&b'\n') && data.len() > super::parse::MAX_REQUEST_LINE;
        if !(head_ended || line_ended_now || over_line || data.len() >= max_head) {
            return Ok(None);
        }
        #[cfg(test)]
        tests::PARSES.with(|c| c.set(c.get() + 1));
        match parse_head(data, max_head)? {
            Some((head, len)) => {
                self.head_start = Some(self.pos);
                self.pos += len;
                self.scanned = 0;
                Ok(Some(head))
            }
            None => Ok(None),
        }
    }

    /// Makes room to read more of a head: doubles a full buffer, up to `max_head` and a bit.
    /// False if a head this long is over the limit.
    pub fn room_for_head(&mut self, max_head: usize) -> bool {
        if self.end < self.buf.len() {
            return true;
        }
        let grown = (self.buf.len() * 2).clamp(INITIAL_BUFFER, max_head + INITIAL_BUFFER);
        if grown <= self.buf.len() {
            return false;
        }
        self.buf.resize(grown, 0);
        true
    }

    /// Moves buffered bytes to the front; frees a large buffer once it is empty, so that idle
    /// keep-alive connections hold little memory.
    pub fn compact(&mut self) {
        self.head_start = None;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            self.scanned = 0;
            if self.buf.len() > INITIAL_BUFFER {
                self.buf = Vec::new();
            }
        } else if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        pub static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    #[test]
    fn a_head_arriving_byte_by_byte_is_parsed_once_its_end_is_in() {
        let mut head = b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..100 {
            head.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(300)).as_bytes());
        }
        head.extend_from_slice(b"\r\nGET /next HTTP/1.1\r\n");
        let mut rb = ReadBuf {
            buf: vec![0; head.len()],
            pos: 0,
            end: 0,
            scanned: 0,
            head_start: None,
        };
        PARSES.with(|c| c.set(0));
        let mut parsed = None;
        for &b in &head {
            rb.buf[rb.end] = b;
            rb.end += 1;
            if let Some(h) = rb.try_head(65536).unwrap() {
                parsed = Some(h);
                break;
            }
        }
        assert_eq!(parsed.unwrap().path(), "/x");
        // Once when the request line ends, once when the head does: not once per byte.
        assert_eq!(PARSES.with(Cell::get), 2);
        assert_eq!(&rb.buf[rb.pos..rb.end], b"", "stopped right after the head");
    }

    #[test]
    fn an_over_long_request_line_is_refused_before_the_head_ends() {
        let mut rb = ReadBuf {
            buf: vec![b'a'; super::super::parse::MAX_REQUEST_LINE + 10],
            pos: 0,
            end: 0,
            scanned: 0,
            head_start: None,
        };
        rb.buf[..4].copy_from_slice(b"GET ");
        rb.end = rb.buf.len();
        assert_eq!(rb.try_head(65536).unwrap_err(), HeadError::UriTooLong);
    }
}
