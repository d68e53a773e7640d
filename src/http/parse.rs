//! Request heads: parses bytes into a `RequestHead` with httparse and applies sluice's strict
//! rules (framing, target form, limits). Pure: no sockets, so every rule is unit-tested here.
//!
//! Not here: reading bodies (`body.rs`) or deciding what is forwarded (`headers.rs`).

/// The request line alone may not be longer than this (else 414).
pub const MAX_REQUEST_LINE: usize = 8192;
/// More header lines than this is treated as a head too large (431).
pub const MAX_HEADERS: usize = 128;

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// One header as received, borrowed from its head: the name's spelling is kept, the value's
/// bytes are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    name: &'a str,
    value: &'a [u8],
}

impl<'a> Header<'a> {
    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

impl std::fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?}",
            self.name,
            String::from_utf8_lossy(self.value)
        )
    }
}

/// A byte range of a head's buffer. `u32`: a head is at most 16 MiB (`max_header_bytes`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Lossless: `RequestHead::new` refuses a head whose buffer would not fit `u32` offsets.
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A parsed, validated request head. Its text lives in one buffer, whatever the number of
/// headers: the method, the target, the path when it is not a piece of the target, then every
/// header name and every header value, each found by a range (an allocation per header and per
/// field, freed on another thread than the one that parsed, cost more than the parse itself).
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The buffer; header names, method and target are text (httparse validates them), and
    /// header values are text too unless one has obs-text bytes (see `raw`).
    text: String,
    /// Only when a header value is not UTF-8: the same bytes as `text` followed by the values,
    /// which are then read here (value ranges are the same in both cases).
    raw: Option<Box<[u8]>>,
    method: Span,
    /// The request target as the client sent it.
    target: Span,
    /// What is forwarded: path + query (origin-form), whatever form the client used.
    path: Span,
    /// Each header's name and value, in the order received.
    headers: Vec<(Span, Span)>,
    /// HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    pub framing: Framing,
    /// The client wants the connection kept open after this response.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn method(&self) -> &str {
        &self.text[self.method.range()]
    }

    /// The request target as the client sent it.
    pub fn target(&self) -> &str {
        &self.text[self.target.range()]
    }

    /// What is forwarded: path + query (origin-form), whatever form the client used.
    pub fn path(&self) -> &str {
        &self.text[self.path.range()]
    }

    /// The headers in the order received, duplicates kept.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = Header<'_>> + Clone {
        let bytes = self.raw.as_deref().unwrap_or(self.text.as_bytes());
        self.headers.iter().map(move |&(name, value)| Header {
            name: &self.text[name.range()],
            value: &bytes[value.range()],
        })
    }

    /// First value of a header (case-insensitive name), if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// True for a method whose body may be replayed safely (RFC 9110 idempotent methods).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        )
    }

    pub fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }

    /// True if the client asks to switch this connection to WebSocket (RFC 6455: `Upgrade:
    /// websocket` named by `Connection: upgrade`), which sluice does not tunnel. Other upgrade
    /// offers (h2c) are only offers: they are dropped as hop-by-hop and the request is served.
    pub fn wants_websocket(&self) -> bool {
        let has = |name: &str, token: &[u8]| {
            self.headers()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| h.value.split(|&b| b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        };
        has("connection", b"upgrade") && has("upgrade", b"websocket")
    }

    /// Copies the parsed head into its buffer: the text first (method, target, path when it is
    /// "/" + a piece of the target, names), then the values. Two allocations (the buffer and the
    /// ranges) when the values are UTF-8 (nearly always), three when one carries obs-text.
    fn new(
        line: RequestLine<'_>,
        headers: &[httparse::Header<'_>],
        flags: Flags,
    ) -> Result<RequestHead, HeadError> {
        let text_len = line.method.len()
            + line.target.len()
            + line.extra_path_len()
            + headers.iter().map(|h| h.name.len()).sum::<usize>();
        let len = text_len + headers.iter().map(|h| h.value.len()).sum::<usize>();
        if u32::try_from(len).is_err() {
            return Err(HeadError::TooLarge);
        }
        let mut text = String::with_capacity(len);
        let (method, target, path) = line.push_to(&mut text);
        let mut spans: Vec<(Span, Span)> = headers
            .iter()
            .map(|h| (push(&mut text, h.name), Span::new(0, 0)))
            .collect();
        let mut bytes = text.into_bytes();
        for (h, (_, value)) in headers.iter().zip(&mut spans) {
            let start = bytes.len();
            bytes.extend_from_slice(h.value);
            *value = Span::new(start, bytes.len());
        }
        let (text, raw) = match String::from_utf8(bytes) {
            Ok(text) => (text, None),
            Err(e) => {
                let mut text = String::with_capacity(text_len);
                line.push_to(&mut text);
                headers.iter().for_each(|h| text.push_str(h.name));
                (text, Some(e.into_bytes().into_boxed_slice()))
            }
        };
        Ok(RequestHead {
            text,
            raw,
            method,
            target,
            path,
            headers: spans,
            http10: flags.http10,
            framing: flags.framing,
            keep_alive: flags.keep_alive,
            expect_continue: flags.expect_continue,
        })
    }
}

impl std::fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("path", &self.path())
            .field("http10", &self.http10)
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .field("expect_continue", &self.expect_continue)
            .finish()
    }
}

/// The request line's pieces, as checked by `build`.
#[derive(Clone, Copy)]
struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
    path: OriginPath<'a>,
}

impl RequestLine<'_> {
    /// Bytes the path takes beyond the target's: only when it is "/" + a piece of the target.
    fn extra_path_len(&self) -> usize {
        match self.path {
            OriginPath::Suffix(_) => 0,
            OriginPath::Slash(rest) => 1 + rest.len(),
        }
    }

    /// Writes method, target and path (if not inside the target) to `text`; their ranges.
    fn push_to(&self, text: &mut String) -> (Span, Span, Span) {
        let method = push(text, self.method);
        let target = push(text, self.target);
        let path = match self.path {
            OriginPath::Suffix(rest) => {
                let end = target.end as usize;
                Span::new(end - rest.len(), end)
            }
            OriginPath::Slash(rest) => {
                let start = push(text, "/").start as usize;
                Span::new(start, push(text, rest).end as usize)
            }
        };
        (method, target, path)
    }
}

/// Appends `s` to `text`; its range there.
fn push(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span::new(start, text.len())
}

/// What `build` decided besides the text.
struct Flags {
    http10: bool,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a head was refused; each maps to one status (400 / 414 / 431).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed or ambiguous; the static text says what, for logs.
    Bad(&'static str),
    UriTooLong,
    TooLarge,
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. `Ok(Some((head, len)))` consumed `len` bytes.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
    // The request line (up to the first LF) is too long if no LF is among its first bytes; a
    // shorter buffer cannot hold a line that long, so the usual head is not searched at all.
    if buf.len() > MAX_REQUEST_LINE && !buf[..=MAX_REQUEST_LINE].contains(&b'\n') {
        return Err(HeadError::UriTooLong);
    }
    // Uninitialised slots: filling 128 empty ones first cost more than parsing a short head.
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let line = RequestLine {
        method: req.method.unwrap_or_default(),
        target: req.path.unwrap_or_default(),
        path: OriginPath::Suffix(""),
    };
    let http10 = req.version == Some(0);
    build(line, http10, req.headers).map(|head| Some((head, len)))
}

fn build(
    mut line: RequestLine<'_>,
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<RequestHead, HeadError> {
    if line.method == "CONNECT" {
        return Err(HeadError::Bad("CONNECT is not supported"));
    }
    line.path = origin_path(line.method, line.target)?;
    let framing = framing(headers, http10)?;
    let hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(HeadError::Bad("exactly one Host header is required"));
    }
    let host_ok = |h: &&httparse::Header<'_>| h.value.iter().all(|b| b.is_ascii_graphic());
    if !headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .all(|h| host_ok(&h))
    {
        return Err(HeadError::Bad("Host must be a printable ASCII host[:port]"));
    }
    let conn = |token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let keep_alive = if http10 {
        conn("keep-alive")
    } else {
        !conn("close")
    };
    let expect_continue = !http10
        && headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect")
                && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        });
    let flags = Flags {
        http10,
        framing,
        keep_alive,
        expect_continue,
    };
    RequestHead::new(line, headers, flags)
}

/// The path + query to forward, as a piece of the target (or "/" + one).
#[derive(Clone, Copy)]
enum OriginPath<'a> {
    /// The path is this suffix of the target (all of it in origin-form).
    Suffix(&'a str),
    /// The path is "/" followed by this suffix of the target.
    Slash(&'a str),
}

/// The path + query to forward. Absolute-form keeps only its path + query: the host in the URI
/// never chooses where traffic goes.
fn origin_path<'a>(method: &str, target: &'a str) -> Result<OriginPath<'a>, HeadError> {
    if target.starts_with('/') {
        return Ok(OriginPath::Suffix(target));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(OriginPath::Suffix(target))
        } else {
            Err(HeadError::Bad("'*' target is only valid with OPTIONS"))
        };
    }
    let scheme = |s: &str| {
        let prefix = target.as_bytes().get(..s.len());
        prefix.is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
    };
    let rest = if scheme("http://") {
        &target[7..]
    } else if scheme("https://") {
        &target[8..]
    } else {
        return Err(HeadError::Bad(
            "request target is not origin-form or absolute-form",
        ));
    };
    match rest.find(['/', '?']) {
        _ if rest.is_empty() => Err(HeadError::Bad("absolute-form target without a host")),
        Some(0) => Err(HeadError::Bad("absolute-form target without a host")),
        Some(i) if rest.as_bytes()[i] == b'/' => Ok(OriginPath::Suffix(&rest[i..])),
        Some(i) => Ok(OriginPath::Slash(&rest[i..])),
        None => Ok(OriginPath::Slash("")),
    }
}

/// Body framing per RFC 9112 §6, strictly: anything ambiguous is refused, so that sluice and the
/// upstream can never disagree on where this request ends.
fn framing(headers: &[httparse::Header<'_>], http10: bool) -> Result<Framing, HeadError> {
    let mut te: Option<&[u8]> = None;
    let mut cl: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(HeadError::Bad("more than one Transfer-Encoding header"));
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if cl.is_some() {
                return Err(HeadError::Bad("more than one Content-Length header"));
            }
            cl = Some(
                parse_content_length(h.value).ok_or(HeadError::Bad("invalid Content-Length"))?,
            );
        }
    }
    match (te, cl) {
        (Some(_), Some(_)) => Err(HeadError::Bad("both Transfer-Encoding and Content-Length")),
        (Some(_), None) if http10 => {
            Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(v), None) if v.trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        (Some(_), None) => Err(HeadError::Bad("unsupported Transfer-Encoding")),
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// 1 to 18 ASCII digits and nothing else (no sign, no list, no spaces inside).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
