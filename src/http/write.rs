//! Response bytes for clients: status lines and headers, small complete responses, and body
//! framing (length, chunked, close). Builds bytes in buffers so that a head goes out in one
//! write. sluice's own error answers are built from these in `answer.rs`.

use std::io::{self, Write};

/// Canonical reason phrase (ureq does not keep the upstream's).
pub fn reason_phrase(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Appends `HTTP/1.1 NNN Reason\r\n`. Also to an HTTP/1.0 client, as nginx and uvicorn answer
/// (RFC 9110 §2.5: the version sluice speaks; the framing is what the client understands —
/// `BodyFraming` and the keep-alive rule see to that).
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut digits = [b'0'; 3];
    let mut s = status.min(999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (s % 10) as u8;
        s /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `Name: value\r\n` for a header whose name ureq hands over lower-cased (the `http`
/// crate's `HeaderName`; ureq keeps no other spelling), in the usual spelling: each letter after
/// the start or a `-` upper-cased (`Content-Type`, `Set-Cookie`, `X-Request-Id`), as Go's
/// `CanonicalMIMEHeaderKey` writes them, with `ETag` and `WWW-Authenticate` spelled as their RFCs do.
pub fn header_canonical(out: &mut Vec<u8>, lower: &str, value: &[u8]) {
    match lower {
        "etag" => out.extend_from_slice(b"ETag"),
        "www-authenticate" => out.extend_from_slice(b"WWW-Authenticate"),
        _ => {
            let start = out.len();
            out.extend_from_slice(lower.as_bytes());
            let mut up = true;
            for b in &mut out[start..] {
                if up {
                    b.make_ascii_uppercase();
                }
                up = *b == b'-';
            }
        }
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number as a header value.
pub fn header_u64(out: &mut Vec<u8>, name: &[u8], value: u64) {
    let mut b = itoa_buf(value);
    header(out, name, b.as_bytes_mut());
}

struct Itoa {
    buf: [u8; 20],
    start: usize,
}

impl Itoa {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut v: u64) -> Itoa {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    Itoa { buf, start: i }
}

/// A complete response with a small in-memory body (admin endpoints, errors).
pub struct Simple<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub extra: &'a [(&'a str, &'a str)],
    pub close: bool,
    pub http10: bool,
    pub head_only: bool,
}

impl Simple<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        status_line(&mut out, self.status);
        header(&mut out, b"Content-Type", self.content_type.as_bytes());
        header_u64(&mut out, b"Content-Length", self.body.len() as u64);
        for (k, v) in self.extra {
            header(&mut out, k.as_bytes(), v.as_bytes());
        }
        if self.close {
            header(&mut out, b"Connection", b"close");
        } else if self.http10 {
            header(&mut out, b"Connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(self.body);
        }
        out
    }
}

/// How a response body is delimited on the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` passed through.
    Length,
    /// Chunked (HTTP/1.1 client, length unknown).
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0 client, length unknown).
    Close,
}

/// Room kept before the data in a copy buffer for a chunk-size line.
pub const CHUNK_PREFIX: usize = 18;
/// Room kept after the data for the chunk's CRLF.
pub const CHUNK_SUFFIX: usize = 2;

/// Writes `buf[CHUNK_PREFIX..CHUNK_PREFIX + n]` as one body piece in one write call, framing
/// it as a chunk when needed. `buf` must have `CHUNK_SUFFIX` bytes of room after the data.
pub fn write_piece(
    w: &mut dyn Write,
    framing: BodyFraming,
    buf: &mut [u8],
    n: usize,
) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length | BodyFraming::Close => {
            w.write_all(&buf[CHUNK_PREFIX..CHUNK_PREFIX + n])
        }
        BodyFraming::Chunked => {
            let size = format_hex(n);
            let start = CHUNK_PREFIX - size.len() - 2;
            buf[start..start + size.len()].copy_from_slice(&size);
            buf[CHUNK_PREFIX - 2..CHUNK_PREFIX].copy_from_slice(b"\r\n");
            buf[CHUNK_PREFIX + n..CHUNK_PREFIX + n + 2].copy_from_slice(b"\r\n");
            w.write_all(&buf[start..CHUNK_PREFIX + n + 2])
        }
    }
}

fn format_hex(mut n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    loop {
        out.push(b"0123456789abcdef"[n & 15]);
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    out
}

/// The last chunk, written when a chunked body ended cleanly (never after an upstream failure:
/// then the connection is closed so the client sees a truncated response).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cased_names_are_written_in_their_usual_spelling() {
        let mut out = Vec::new();
        for name in [
            "content-type",
            "set-cookie",
            "x-request-id",
            "etag",
            "www-authenticate",
            "p3p",
        ] {
            header_canonical(&mut out, name, b"v");
        }
        assert_eq!(
            out,
            b"Content-Type: v\r\nSet-Cookie: v\r\nX-Request-Id: v\r\nETag: v\r\nWWW-Authenticate: v\r\nP3p: v\r\n"
        );
    }

    #[test]
    fn chunk_piece_is_framed_in_place() {
        let mut buf = vec![0u8; CHUNK_PREFIX + 300 + CHUNK_SUFFIX];
        buf[CHUNK_PREFIX..CHUNK_PREFIX + 300].fill(b'x');
        let mut out = Vec::new();
        write_piece(&mut out, BodyFraming::Chunked, &mut buf, 300).unwrap();
        assert_eq!(&out[..5], b"12c\r\n");
        assert_eq!(out.len(), 5 + 300 + 2);
        assert!(out.ends_with(b"x\r\n"));
    }
}
