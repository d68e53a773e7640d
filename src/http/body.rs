//! Request bodies: a strict chunked decoder and a `Read` over a client's body that enforces its
//! framing and size limit. A body that ends early is an error, never a short EOF, because a short
//! EOF would let the upstream treat a cut-off upload as complete (and makes ureq spin).
//!
//! Works over any `BufRead`, so the test upstream and the fuzz target use the same decoder.

use std::io::{self, BufRead, Read};

use super::parse::Framing;

/// Longest chunk-size line (size, extensions, CRLF) we accept.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section we read (and discard).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a request body could not be read to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Framing violated (bad chunk line, missing CRLF…): answered 400 if nothing was sent yet.
    Malformed(&'static str),
    /// Larger than `max_body_bytes`: 413.
    TooLarge,
    /// The client closed before the declared end.
    Truncated,
    /// The client stalled past its timeout or reset the connection.
    Io(io::ErrorKind),
}

impl BodyError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            BodyError::Malformed(_) | BodyError::TooLarge => io::ErrorKind::InvalidData,
            BodyError::Truncated => io::ErrorKind::UnexpectedEof,
            BodyError::Io(k) => k,
        };
        io::Error::new(kind, format!("client body: {self:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` strictly: hex sizes only (no `0x`, sign, `_` or spaces),
/// CRLF line ends, bounded lines, no overflow. Trailers are read and dropped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: Chunk::Size,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Reads decoded bytes into `out`; `Ok(0)` only at the real end of the body.
    pub fn read(&mut self, src: &mut dyn BufRead, out: &mut [u8]) -> Result<usize, BodyError> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                Chunk::Done => return Ok(0),
                Chunk::Size => {
                    read_line(src, &mut self.line, MAX_CHUNK_LINE)?;
                    let size = parse_chunk_size(&self.line)?;
                    self.state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let avail = fill(src)?;
                    let n = avail
                        .len()
                        .min(out.len())
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    out[..n].copy_from_slice(&avail[..n]);
                    src.consume(n);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(n);
                }
                Chunk::DataEnd => {
                    read_line(src, &mut self.line, 2)?;
                    if self.line != b"\r\n" {
                        return Err(BodyError::Malformed("chunk data not followed by CRLF"));
                    }
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    read_line(src, &mut self.line, MAX_CHUNK_LINE)?;
                    self.trailer_bytes += self.line.len();
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(BodyError::Malformed("trailer section too large"));
                    }
                    if !self.line.ends_with(b"\r\n") {
                        return Err(BodyError::Malformed("trailer line without CRLF"));
                    }
                    if self.line == b"\r\n" {
                        self.state = Chunk::Done;
                    } else if self.line.contains(&0) {
                        return Err(BodyError::Malformed("NUL in trailer"));
                    }
                }
            }
        }
    }
}

fn fill(src: &mut dyn BufRead) -> Result<&[u8], BodyError> {
    match src.fill_buf() {
        Ok([]) => Err(BodyError::Truncated),
        Ok(b) => Ok(b),
        Err(e) => Err(BodyError::Io(e.kind())),
    }
}

/// Reads one line ending in `\n` (kept) into `line`; more than `max` bytes is malformed.
fn read_line(src: &mut dyn BufRead, line: &mut Vec<u8>, max: usize) -> Result<(), BodyError> {
    line.clear();
    loop {
        let avail = fill(src)?;
        let take = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => avail.len(),
        };
        if line.len() + take > max {
            return Err(BodyError::Malformed("chunk line too long"));
        }
        line.extend_from_slice(&avail[..take]);
        src.consume(take);
        if line.last() == Some(&b'\n') {
            return Ok(());
        }
    }
}

/// `1*HEXDIG [ ";" ext ] CRLF`, at most 15 hex digits (so no overflow).
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(BodyError::Malformed("chunk size line without CRLF"));
    };
    let digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Malformed("invalid chunk size"));
    }
    let rest = &body[digits..];
    let ext_ok = rest.is_empty()
        || (rest[0] == b';'
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80));
    if !ext_ok {
        return Err(BodyError::Malformed("invalid chunk size"));
    }
    Ok(body[..digits].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
    }))
}

enum Mode {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

/// The body of one client request, read from the connection's buffered reader.
///
/// `on_first_read` runs once before the first byte is read (sluice sends `100 Continue` there).
pub struct RequestBody<'a> {
    src: &'a mut dyn BufRead,
    mode: Mode,
    max: u64,
    /// Body bytes delivered so far.
    pub read: u64,
    /// The first error, kept so the caller can tell a client fault from an upstream one even
    /// after ureq has wrapped the `io::Error`.
    pub failure: Option<BodyError>,
    on_first_read: Option<Box<dyn FnOnce() -> io::Result<()> + 'a>>,
}

impl<'a> RequestBody<'a> {
    /// `max` = 0 means unlimited. A declared length over `max` fails on the first read.
    pub fn new(src: &'a mut dyn BufRead, framing: Framing, max: u64) -> Self {
        let mode = match framing {
            Framing::None | Framing::Length(0) => Mode::Done,
            Framing::Length(n) => Mode::Length(n),
            Framing::Chunked => Mode::Chunked(ChunkedDecoder::default()),
        };
        RequestBody {
            src,
            mode,
            max,
            read: 0,
            failure: None,
            on_first_read: None,
        }
    }

    pub fn on_first_read(mut self, f: impl FnOnce() -> io::Result<()> + 'a) -> Self {
        self.on_first_read = Some(Box::new(f));
        self
    }

    /// True once the whole body has been read (the connection can carry another request).
    pub fn is_complete(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }

    fn read_inner(&mut self, out: &mut [u8]) -> Result<usize, BodyError> {
        if let Mode::Length(n) = self.mode {
            if self.max > 0 && n > self.max {
                return Err(BodyError::TooLarge);
            }
        }
        if let Some(f) = self.on_first_read.take() {
            if !matches!(self.mode, Mode::Done) {
                f().map_err(|e| BodyError::Io(e.kind()))?;
            }
        }
        let n = match &mut self.mode {
            Mode::Done => return Ok(0),
            Mode::Length(left) => {
                let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = {
                    let avail = fill(self.src)?;
                    let n = avail.len().min(want);
                    out[..n].copy_from_slice(&avail[..n]);
                    n
                };
                self.src.consume(n);
                *left -= n as u64;
                if *left == 0 {
                    self.mode = Mode::Done;
                }
                n
            }
            Mode::Chunked(d) => {
                let n = d.read(self.src, out)?;
                if d.is_done() {
                    self.mode = Mode::Done;
                }
                n
            }
        };
        self.read += n as u64;
        if self.max > 0 && self.read > self.max {
            return Err(BodyError::TooLarge);
        }
        Ok(n)
    }

    /// Reads and discards the rest of the body, up to `limit` bytes; true if it ended cleanly.
    pub fn drain(&mut self, limit: u64) -> bool {
        let mut buf = [0u8; 4096];
        let start = self.read;
        while self.read - start <= limit {
            match self.read(&mut buf) {
                Ok(0) => return self.is_complete(),
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Read for RequestBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = self.failure {
            return Err(f.into_io());
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.read_inner(out).map_err(|e| {
            self.failure = Some(e);
            e.into_io()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(raw: &[u8]) -> Result<Vec<u8>, BodyError> {
        let mut src = io::BufReader::with_capacity(3, raw);
        let mut body = RequestBody::new(&mut src, Framing::Chunked, 0);
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return Err(body.failure.unwrap()),
            }
        }
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers() {
        let raw = b"5;name=v\r\nhello\r\nB\r\n world, bye\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(decode(raw).unwrap(), b"hello world, bye");
        let mut src = io::BufReader::new(&raw[..]);
        let mut body = RequestBody::new(&mut src, Framing::Chunked, 0);
        assert!(body.drain(1 << 20));
        drop(body);
        let mut rest = String::new();
        src.read_to_string(&mut rest).unwrap();
        assert_eq!(
            rest, "NEXT",
            "the decoder must stop exactly at the end of the body"
        );
    }

    #[test]
    fn rejects_smuggling_shaped_chunk_lines() {
        for raw in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5_0\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
            b"5\r\nhello\r\n0\r\nbad-trailer\n",
        ] {
            assert!(
                matches!(decode(raw), Err(BodyError::Malformed(_))),
                "accepted {raw:?}"
            );
        }
    }

    #[test]
    fn early_end_is_an_error_not_eof() {
        assert_eq!(decode(b"5\r\nhel"), Err(BodyError::Truncated));
        assert_eq!(decode(b"5\r\nhello\r\n"), Err(BodyError::Truncated));
        let mut src = io::BufReader::new(&b"ab"[..]);
        let mut body = RequestBody::new(&mut src, Framing::Length(5), 0);
        let mut out = Vec::new();
        assert!(body.read_to_end(&mut out).is_err());
        assert_eq!(body.failure, Some(BodyError::Truncated));
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let mut src = io::BufReader::new(&b"abcdeNEXT"[..]);
        let mut body = RequestBody::new(&mut src, Framing::Length(5), 0);
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcde");
        assert!(body.is_complete());
    }

    #[test]
    fn size_limit_applies_to_declared_and_streamed_bodies() {
        let mut src = io::BufReader::new(&b"abcdef"[..]);
        let mut body = RequestBody::new(&mut src, Framing::Length(6), 5);
        assert!(body.read(&mut [0u8; 8]).is_err());
        assert_eq!(body.failure, Some(BodyError::TooLarge));
        let mut src = io::BufReader::new(&b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..]);
        let mut body = RequestBody::new(&mut src, Framing::Chunked, 5);
        let mut out = Vec::new();
        assert!(body.read_to_end(&mut out).is_err());
        assert_eq!(body.failure, Some(BodyError::TooLarge));
    }

    #[test]
    fn first_read_hook_runs_once_and_only_for_a_body() {
        let count = std::cell::Cell::new(0);
        let mut src = io::BufReader::new(&b"abc"[..]);
        let mut body = RequestBody::new(&mut src, Framing::Length(3), 0).on_first_read(|| {
            count.set(count.get() + 1);
            Ok(())
        });
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        drop(body);
        assert_eq!(count.get(), 1);
        let mut src = io::BufReader::new(&b""[..]);
        let mut body = RequestBody::new(&mut src, Framing::None, 0).on_first_read(|| {
            count.set(count.get() + 1);
            Ok(())
        });
        assert_eq!(body.read(&mut [0u8; 4]).unwrap(), 0);
        drop(body);
        assert_eq!(count.get(), 1);
    }
}
