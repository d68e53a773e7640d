//! Header rules (README "What sluice does with a request"): which headers cross sluice in each direction, and the
//! ones it adds (`X-Forwarded-For`, `X-Request-Id`, `Via` on responses, and on requests only
//! with `request_via`). Pure functions over header lists; no I/O.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::http::parse::RequestHead;

/// Never forwarded in either direction; `Connection` also names more (RFC 9110 §7.6.1).
/// `Expect` is answered by sluice itself (100-continue), so it goes no further.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The `Connection` headers of a message, borrowed from it: the usual one value without an
/// allocation (a request and a response pass through this each).
#[derive(Default)]
pub struct ConnectionTokens<'a> {
    first: Option<&'a [u8]>,
    more: Vec<&'a [u8]>,
}

impl ConnectionTokens<'_> {
    /// True if a token of these headers is `name` (any case).
    fn names(&self, name: &str) -> bool {
        self.first
            .iter()
            .chain(&self.more)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The tokens of all `Connection` headers in `values`.
pub fn connection_tokens<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> ConnectionTokens<'a> {
    ConnectionTokens {
        first: values.next(),
        more: values.collect(),
    }
}

/// True if a header with this (any-case) name crosses the proxy.
pub fn is_end_to_end(name: &str, tokens: &ConnectionTokens<'_>) -> bool {
    !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) && !tokens.names(name)
}

/// The longest client `X-Request-Id` kept (a longer one is replaced by sluice's own).
pub const MAX_REQUEST_ID: usize = 128;

/// A request's id, held inline: it is made where the head is read (often the front end) and
/// dropped by the worker, and an allocation freed on another thread costs the allocator a lock.
/// Only printable ASCII, at most `MAX_REQUEST_ID` bytes.
#[derive(Clone)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID],
}

impl RequestId {
    /// `id` if it is a request id sluice keeps: 1 to `MAX_REQUEST_ID` printable ASCII bytes.
    fn of(id: &[u8]) -> Option<RequestId> {
        let keep =
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(u8::is_ascii_graphic);
        keep.then(|| {
            let mut bytes = [0; MAX_REQUEST_ID];
            bytes[..id.len()].copy_from_slice(id);
            RequestId {
                len: id.len() as u8,
                bytes,
            }
        })
    }

    pub fn as_str(&self) -> &str {
        // Printable ASCII only (`of`): always UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A client's request id is kept if it is short printable ASCII; else sluice makes one.
pub fn request_id(head: &RequestHead) -> RequestId {
    head.header("x-request-id")
        .and_then(RequestId::of)
        .unwrap_or_else(new_request_id)
}

/// 16 random hex digits.
pub fn new_request_id() -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = crate::rand::next_u64();
    let mut bytes = [0u8; MAX_REQUEST_ID];
    for (i, digit) in bytes[..16].iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    RequestId { len: 16, bytes }
}

/// The headers sent upstream: end-to-end headers in the order received (borrowed from the head,
/// not copied; on the wire ureq writes each name lower-cased and a name's repeated lines
/// together, in their order — the `http` crate's header map; README "Migrating from
/// proxy_server_enhanced.py"), then one `X-Forwarded-For` (earlier hops + this client), one
/// `Via` with sluice's entry if `via` (`request_via`; else the client's `Via` passes as it
/// came: the Python service, nginx and HAProxy add none, and an nginx upstream with its default
/// `gzip_proxied off` stops compressing for a request that has one), and `X-Request-Id`.
pub fn upstream_request_headers<'a>(
    head: &'a RequestHead,
    client: IpAddr,
    request_id: &'a str,
    via: bool,
) -> Vec<(&'a str, Cow<'a, [u8]>)> {
    let tokens = connection_tokens(
        head.headers()
            .filter(|h| h.name().eq_ignore_ascii_case("connection"))
            .map(|h| h.value()),
    );
    let mut xff: Vec<u8> = Vec::new();
    let mut via_list: Vec<u8> = Vec::new();
    let mut out = Vec::with_capacity(head.headers().len() + 3);
    for h in head.headers() {
        if !is_end_to_end(h.name(), &tokens) {
            continue;
        }
        let list = if h.name().eq_ignore_ascii_case("x-forwarded-for") {
            &mut xff
        } else if via && h.name().eq_ignore_ascii_case("via") {
            &mut via_list
        } else {
            if !h.name().eq_ignore_ascii_case("x-request-id") {
                out.push((h.name(), Cow::Borrowed(h.value())));
            }
            continue;
        };
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(h.value().trim_ascii());
    }
    append(&mut xff, &ip_text(client));
    out.push(("x-forwarded-for", Cow::Owned(xff)));
    if via {
        append(&mut via_list, via_entry(head.http10));
        out.push(("via", Cow::Owned(via_list)));
    }
    out.push(("x-request-id", Cow::Borrowed(request_id.as_bytes())));
    out
}

/// sluice's own `Via` entry (RFC 9110 §7.6.3), added in both directions: the protocol version
/// the client spoke, and sluice's name.
pub fn via_entry(http10: bool) -> &'static [u8] {
    if http10 {
        b"1.0 sluice"
    } else {
        b"1.1 sluice"
    }
}

/// An address as text, as `Display` writes it; an IPv4 one without the formatting machinery
/// (which cost more than the rest of the header rules together).
fn ip_text(ip: IpAddr) -> Vec<u8> {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string().into_bytes();
    };
    let mut out = Vec::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if o >= 100 {
            out.push(b'0' + o / 100);
        }
        if o >= 10 {
            out.push(b'0' + o / 10 % 10);
        }
        out.push(b'0' + o % 10);
    }
    out
}

/// Appends `item` to a comma-separated list.
pub fn append(list: &mut Vec<u8>, item: &[u8]) {
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(item);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_head;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string().into_bytes());
        }
        for o in 0..=255u8 {
            let ip = IpAddr::from([o, 0, 255 - o, 7]);
            assert_eq!(ip_text(ip), ip.to_string().into_bytes());
        }
    }

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0
    }

    fn names(h: &[(&str, Cow<'_, [u8]>)]) -> Vec<String> {
        h.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
    }

    fn value<'a>(h: &'a [(&str, Cow<'_, [u8]>)], name: &str) -> &'a str {
        let v = &h
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap()
            .1;
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Keep: 1\r\n\r\n",
        );
        let out = upstream_request_headers(&h, "10.0.0.9".parse().unwrap(), "rid", true);
        let n = names(&out);
        for gone in [
            "connection",
            "x-foo",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-connection",
        ] {
            assert!(!n.contains(&gone.to_string()), "{gone} forwarded");
        }
        assert!(n.contains(&"x-keep".to_string()) && n.contains(&"host".to_string()));
    }

    #[test]
    fn forwarded_for_and_via_are_appended_to_earlier_hops() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nVia: 1.0 edge\r\n\r\n",
        );
        let out = upstream_request_headers(&h, "127.0.0.1".parse().unwrap(), "rid", true);
        assert_eq!(
            value(&out, "x-forwarded-for"),
            "1.1.1.1, 2.2.2.2, 127.0.0.1"
        );
        assert_eq!(value(&out, "via"), "1.0 edge, 1.1 sluice");
        assert_eq!(value(&out, "x-request-id"), "rid");
        assert_eq!(
            names(&out)
                .iter()
                .filter(|n| *n == "x-forwarded-for")
                .count(),
            1
        );
    }

    #[test]
    fn without_request_via_sluice_adds_none_and_the_clients_passes_as_it_came() {
        let h =
            head("GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 edge\r\nX-A: 1\r\nVia: 1.1 cdn\r\n\r\n");
        let out = upstream_request_headers(&h, "127.0.0.1".parse().unwrap(), "rid", false);
        let vias: Vec<&[u8]> = out
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("via"))
            .map(|(_, v)| &v[..])
            .collect();
        assert_eq!(vias, [&b"1.0 edge"[..], b"1.1 cdn"]);
        let h = head("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let out = upstream_request_headers(&h, "127.0.0.1".parse().unwrap(), "rid", false);
        assert!(!names(&out).contains(&"via".to_string()));
    }

    #[test]
    fn client_request_id_is_kept_when_sane() {
        assert_eq!(
            request_id(&head(
                "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-123\r\n\r\n"
            ))
            .as_str(),
            "abc-123"
        );
        let longest = "i".repeat(MAX_REQUEST_ID);
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: {longest}\r\n\r\n");
        assert_eq!(
            request_id(&head(&raw)).as_str(),
            longest,
            "up to 128 bytes kept"
        );
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: {longest}i\r\n\r\n");
        assert_eq!(request_id(&head(&raw)).len(), 16, "a longer one replaced");
        let made = request_id(&head(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a b\r\n\r\n",
        ));
        assert_eq!(made.len(), 16);
        assert!(made
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let ids: std::collections::HashSet<_> =
            (0..100).map(|_| new_request_id().to_string()).collect();
        assert_eq!(ids.len(), 100);
        assert!(is_end_to_end("Set-Cookie", &ConnectionTokens::default()));
    }
}
