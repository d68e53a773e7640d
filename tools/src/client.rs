//! A minimal blocking HTTP/1.1 client for sluice's own tools (load tester, demo): one keep-alive
//! connection, a prepared request, a response read with its framing and its body counted, and
//! failures sorted into the kinds a load report shows. Not used by the proxy itself.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A parsed `http://host[:port]/path?query` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{text}': only http:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = split_authority(authority)
            .ok_or_else(|| format!("'{text}': missing or bad host or port"))?;
        Ok(Url {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// Every address the host resolves to, IPv6 first then IPv4 (as curl tries them).
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let mut addrs: Vec<SocketAddr> =
            (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "host resolves to nothing",
            ));
        }
        addrs.sort_by_key(|a| a.is_ipv4());
        Ok(addrs)
    }

    /// The Host header value.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (default port 80).
fn split_authority(a: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => 80,
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    ok.then_some((host, port))
}

/// How a request failed, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Refused,
    Timeout,
    Reset,
    Closed,
    Malformed,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Other => "other",
        }
    }

    pub fn of(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            io::ErrorKind::InvalidData => ErrorKind::Malformed,
            _ => ErrorKind::Other,
        }
    }
}

/// What came back: status, sluice's reason (if it answered itself), body size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub sluice_error: Option<String>,
    pub body_bytes: u64,
    pub keep_alive: bool,
}

/// One client connection that reconnects when needed.
pub struct Client {
    /// Tried in order until one connects; the one that did is tried first next time.
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    keepalive: bool,
    conn: Option<BufReader<TcpStream>>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Client {
    pub fn new(addrs: Vec<SocketAddr>, timeout: Duration, keepalive: bool) -> Client {
        Client {
            addrs,
            timeout,
            keepalive,
            conn: None,
        }
    }

    /// Sends `request` (complete bytes) and reads the answer. A reused connection that closed
    /// before any response byte is retried once on a new one (RFC 9112 §9.3.1).
    pub fn call(&mut self, request: &[u8], head_request: bool) -> io::Result<Answer> {
        let reused = self.conn.is_some();
        match self.call_once(request, head_request) {
            Err(e)
                if reused && matches!(ErrorKind::of(&e), ErrorKind::Closed | ErrorKind::Reset) =>
            {
                self.conn = None;
                self.call_once(request, head_request)
            }
            r => r,
        }
    }

    fn call_once(&mut self, request: &[u8], head_request: bool) -> io::Result<Answer> {
        if self.conn.is_none() {
            let s = self.connect()?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::with_capacity(64 * 1024, s));
        }
        let result = self.exchange(request, head_request);
        if !matches!(&result, Ok(a) if a.keep_alive && self.keepalive) {
            self.conn = None;
        }
        result
    }

    /// Connects to the first address that answers (a name may resolve to `::1` first while the
    /// server listens on IPv4 only).
    fn connect(&mut self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for i in 0..self.addrs.len() {
            match TcpStream::connect_timeout(&self.addrs[i], self.timeout) {
                Ok(s) => {
                    self.addrs.swap(0, i);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn exchange(&mut self, request: &[u8], head_request: bool) -> io::Result<Answer> {
        let conn = self.conn.as_mut().ok_or_else(|| invalid("no connection"))?;
        conn.get_mut().write_all(request)?;
        read_answer(conn, head_request)
    }
}

/// Reads one response, discarding its body.
pub fn read_answer(r: &mut impl BufRead, head_request: bool) -> io::Result<Answer> {
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        if head.len() > 64 * 1024 {
            return Err(invalid("response head too large"));
        }
        if &head[before..] == b"\r\n" || &head[before..] == b"\n" {
            if before == 0 {
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut slots);
    if !matches!(resp.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(invalid("malformed response head"));
    }
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) {
        return read_answer(r, head_request);
    }
    let find = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let close = find("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"))
        || resp.version == Some(0);
    let sluice_error = find("x-sluice-error");
    let mut answer = Answer {
        status,
        sluice_error,
        body_bytes: 0,
        keep_alive: !close,
    };
    if head_request || status == 204 || status == 304 {
        return Ok(answer);
    }
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut decoder = sluice::http::body::ChunkedDecoder::default();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match decoder.read(r, &mut buf) {
                Ok(0) => break,
                Ok(n) => answer.body_bytes += n as u64,
                Err(sluice::http::body::BodyError::Io(k)) => return Err(io::Error::from(k)),
                Err(sluice::http::body::BodyError::Truncated) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked body truncated",
                    ))
                }
                Err(_) => return Err(invalid("bad chunked body")),
            }
        }
    } else if let Some(cl) = find("content-length") {
        let cl: u64 = cl
            .trim()
            .parse()
            .map_err(|_| invalid("bad Content-Length"))?;
        let got = io::copy(&mut r.take(cl), &mut io::sink())?;
        if got < cl {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body truncated",
            ));
        }
        answer.body_bytes = got;
    } else {
        answer.body_bytes = io::copy(r, &mut io::sink())?;
        answer.keep_alive = false;
    }
    Ok(answer)
}

/// Builds the bytes of a request.
pub fn request_bytes(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    body: &[u8],
    keepalive: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {} HTTP/1.1\r\n", url.path).into_bytes();
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        out.extend_from_slice(format!("Host: {}\r\n", url.authority()).as_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    if !keepalive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/a/b?x=1")
        );
        let u = Url::parse("http://localhost").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        assert!(Url::parse("https://x/").is_err());
        assert!(Url::parse("localhost:8080").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
    }

    #[test]
    fn reads_length_chunked_and_close_delimited_answers() {
        let mut r = io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 503 Service Unavailable\r\nX-Sluice-Error: queue_full\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec());
        let a = read_answer(&mut r, false).unwrap();
        assert_eq!((a.status, a.body_bytes, a.keep_alive), (200, 3, true));
        let a = read_answer(&mut r, false).unwrap();
        assert_eq!(
            (a.status, a.body_bytes, a.sluice_error.as_deref()),
            (503, 2, Some("queue_full"))
        );
        let mut r = io::Cursor::new(b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec());
        let a = read_answer(&mut r, false).unwrap();
        assert_eq!((a.body_bytes, a.keep_alive), (5, false));
        let mut r = io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec());
        assert_eq!(
            ErrorKind::of(&read_answer(&mut r, false).unwrap_err()),
            ErrorKind::Closed
        );
    }
}
