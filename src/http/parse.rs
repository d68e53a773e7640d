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

/// One header as received: the name's spelling is kept, the value's bytes are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A parsed, validated request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as the client sent it.
    pub target: String,
    /// What is forwarded: path + query (origin-form), whatever form the client used.
    pub path: String,
    /// HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// The client wants the connection kept open after this response.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    /// First value of a header (case-insensitive name), if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// True for a method whose body may be replayed safely (RFC 9110 idempotent methods).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        )
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// True if the client asks to switch this connection to WebSocket (RFC 6455: `Upgrade:
    /// websocket` named by `Connection: upgrade`), which sluice does not tunnel. Other upgrade
    /// offers (h2c) are only offers: they are dropped as hop-by-hop and the request is served.
    pub fn wants_websocket(&self) -> bool {
        let has = |name: &str, token: &[u8]| {
            self.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| h.value.split(|&b| b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        };
        has("connection", b"upgrade") && has("upgrade", b"websocket")
    }
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
    let line_end = buf.iter().position(|&b| b == b'\n');
    match line_end {
        Some(n) if n > MAX_REQUEST_LINE => return Err(HeadError::UriTooLong),
        None if buf.len() > MAX_REQUEST_LINE => return Err(HeadError::UriTooLong),
        _ => {}
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
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
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let http10 = req.version == Some(0);
    let headers: Vec<Header> = req
        .headers
        .iter()
        .map(|h| Header {
            name: h.name.to_string(),
            value: h.value.to_vec(),
        })
        .collect();
    build(method, target, http10, headers).map(|head| Some((head, len)))
}

fn build(
    method: String,
    target: String,
    http10: bool,
    headers: Vec<Header>,
) -> Result<RequestHead, HeadError> {
    if method == "CONNECT" {
        return Err(HeadError::Bad("CONNECT is not supported"));
    }
    let path = origin_path(&method, &target)?;
    let framing = framing(&headers, http10)?;
    let hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(HeadError::Bad("exactly one Host header is required"));
    }
    let host_ok = |h: &&Header| h.value.iter().all(|b| b.is_ascii_graphic());
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
    Ok(RequestHead {
        method,
        target,
        path,
        http10,
        headers,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// The path + query to forward. Absolute-form keeps only its path + query: the host in the URI
/// never chooses where traffic goes.
fn origin_path(method: &str, target: &str) -> Result<String, HeadError> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok("*".into())
        } else {
            Err(HeadError::Bad("'*' target is only valid with OPTIONS"))
        };
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(HeadError::Bad(
            "request target is not origin-form or absolute-form",
        ));
    };
    match rest.find(['/', '?']) {
        _ if rest.is_empty() => Err(HeadError::Bad("absolute-form target without a host")),
        Some(0) => Err(HeadError::Bad("absolute-form target without a host")),
        Some(i) if rest.as_bytes()[i] == b'/' => Ok(rest[i..].to_string()),
        Some(i) => Ok(format!("/{}", &rest[i..])),
        None => Ok("/".into()),
    }
}

/// Body framing per RFC 9112 §6, strictly: anything ambiguous is refused, so that sluice and the
/// upstream can never disagree on where this request ends.
fn framing(headers: &[Header], http10: bool) -> Result<Framing, HeadError> {
    let mut te: Option<&[u8]> = None;
    let mut cl: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(HeadError::Bad("more than one Transfer-Encoding header"));
            }
            te = Some(&h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if cl.is_some() {
                return Err(HeadError::Bad("more than one Content-Length header"));
            }
            cl = Some(
                parse_content_length(&h.value).ok_or(HeadError::Bad("invalid Content-Length"))?,
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
mod tests {
    use super::*;

    fn ok(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0
    }

    fn bad(raw: &str) -> HeadError {
        parse_head(raw.as_bytes(), 65536).unwrap_err()
    }

    #[test]
    fn parses_a_simple_get_with_keep_alive() {
        let h = ok("GET /a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/a%2Fb?x=1&y=%20");
        assert!(h.keep_alive && !h.http10);
        assert_eq!(h.framing, Framing::None);
    }

    #[test]
    fn partial_head_asks_for_more_and_reports_consumed_length() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 65536),
            Ok(None)
        );
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /next";
        let (_, len) = parse_head(raw, 65536).unwrap().unwrap();
        assert_eq!(&raw[len..], b"GET /next");
    }

    #[test]
    fn http10_keeps_alive_only_when_asked() {
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn absolute_form_keeps_only_path_and_query() {
        assert_eq!(
            ok("GET http://evil.example:9/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n").path,
            "/p?q=1"
        );
        assert_eq!(
            ok("GET HTTPS://evil.example HTTP/1.1\r\nHost: h\r\n\r\n").path,
            "/"
        );
        assert_eq!(
            ok("GET http://evil?q HTTP/1.1\r\nHost: h\r\n\r\n").path,
            "/?q"
        );
        assert_eq!(
            bad("GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n"),
            HeadError::Bad("absolute-form target without a host")
        );
        assert!(matches!(
            bad("GET ftp://x/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            HeadError::Bad(_)
        ));
    }

    #[test]
    fn connect_and_star_are_refused_except_options_star() {
        assert!(matches!(
            bad("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
            HeadError::Bad(_)
        ));
        assert!(matches!(
            bad("GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
            HeadError::Bad(_)
        ));
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").path, "*");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(bad(raw), HeadError::Bad(_)), "accepted: {raw:?}");
        }
    }

    #[test]
    fn valid_framing_is_understood() {
        let h = ok("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(12));
        let h = ok("POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding:  Chunked \r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = ok("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(99_999_999_999_999));
    }

    #[test]
    fn malformed_header_lines_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(matches!(bad(raw), HeadError::Bad(_)), "accepted: {raw:?}");
        }
    }

    #[test]
    fn limits_map_to_414_and_431() {
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
            "a".repeat(MAX_REQUEST_LINE)
        );
        assert_eq!(bad(&long), HeadError::UriTooLong);
        let partial_long = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE + 10));
        assert_eq!(
            parse_head(partial_long.as_bytes(), 65536),
            Err(HeadError::UriTooLong)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "b".repeat(2000)
        );
        assert_eq!(parse_head(big.as_bytes(), 1024), Err(HeadError::TooLarge));
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            bad(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
            HeadError::TooLarge
        );
    }

    #[test]
    fn expect_continue_is_noticed_for_http11_only() {
        assert!(
            ok("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            !ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }
}
