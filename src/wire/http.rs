//! The HTTP/1.1 subset the appliance speaks, for wrk, curl and load balancers: keep-alive,
//! pipelined requests, small bodies, a few headers that matter. Parsing is `httparse`; this
//! module bounds everything, extracts what the handlers need, and writes responses.
//!
//! Sans-IO: bytes in, requests out; responses appended to an output buffer. Runs on the core
//! that owns the connection.

use bytes::{Buf, BytesMut};

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Largest request body (a shake token in hex is 128 bytes).
pub const BODY_BYTES_MAX: usize = 4 * 1024;
/// Most headers parsed per request (more: 400).
pub const HEADERS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// What a handler needs from one request, borrowed from the decoder's buffer (no allocation
/// per request). Drop it, then [`HttpDecoder::consume`] the length `next_request` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// Path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `Authorization: Bearer <token>`, or an `X-Auth` header, as sent (ASCII whitespace
    /// trimmed; checked by whoever decodes it).
    pub auth: Option<&'a [u8]>,
    /// The client asked to close after this response (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    pub body: &'a [u8],
}

/// Why a request cannot be served. The connection answers with `status` and closes: after a
/// malformed request there is no reliable way to find the next one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head exceeds {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("request body of {0} bytes exceeds {BODY_BYTES_MAX}")]
    BodyTooLarge(u64),
    #[error("method {0} is not supported (use GET or POST)")]
    Method(String),
    #[error("chunked request bodies are not supported; send Content-Length")]
    Chunked,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::Method(_) => 405,
            HttpError::Chunked => 411,
        }
    }
}

#[derive(Debug, Default)]
pub struct HttpDecoder {
    buffer: BytesMut,
}

impl HttpDecoder {
    pub fn new() -> HttpDecoder {
        HttpDecoder::default()
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The buffer input is appended to (see `FrameDecoder::input`).
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Lets go of the buffer's memory when nothing is buffered.
    pub fn release_if_empty(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            self.buffer = BytesMut::new();
        }
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole request and how many buffered bytes it spans, `Ok(None)` when more bytes
    /// are needed, or why the connection must be answered with an error and closed. The
    /// request borrows the buffer: [`HttpDecoder::consume`] the span once done with it.
    pub fn next_request(&self) -> Result<Option<(Request<'_>, usize)>, HttpError> {
        // Uninitialised header slots: zeroing 32 of them cost more than parsing a short head.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(&self.buffer, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buffer.len() > HEAD_BYTES_MAX {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::Malformed(format!(
                    "more than {HEADERS_MAX} headers"
                )))
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        };
        if head_len > HEAD_BYTES_MAX {
            return Err(HttpError::HeadTooLarge);
        }
        let method = match parsed.method.unwrap_or("") {
            "GET" => Method::Get,
            "POST" => Method::Post,
            other => return Err(HttpError::Method(other.chars().take(16).collect())),
        };
        let target = parsed.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let http10 = parsed.version == Some(0);
        let mut close = http10;
        let mut auth = None;
        let mut body_len: Option<u64> = None;
        let mut transfer_encoding = false;
        // Only the headers that matter are looked at (and must be UTF-8); others pass as is.
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            // The length first: most headers are none of these and cost one comparison.
            match name.len() {
                13 if name.eq_ignore_ascii_case(b"authorization") => {
                    let value = h.value.trim_ascii();
                    auth = value
                        .strip_prefix(b"Bearer ".as_slice())
                        .map(<[u8]>::trim_ascii);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let length = content_length(header_text(h)?)?;
                    // Two lengths that differ would let this server and another on the way
                    // see different requests (request smuggling, RFC 9112 6.3).
                    if body_len.is_some_and(|l| l != length) {
                        return Err(HttpError::Malformed(
                            "two different Content-Length headers".into(),
                        ));
                    }
                    body_len = Some(length);
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    let value = header_text(h)?;
                    if value.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if value.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                }
                6 if name.eq_ignore_ascii_case(b"x-auth") => auth = Some(h.value.trim_ascii()),
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => transfer_encoding = true,
                _ => {}
            }
        }
        if transfer_encoding {
            return Err(if body_len.is_some() {
                HttpError::Malformed("both Transfer-Encoding and Content-Length".into())
            } else {
                HttpError::Chunked
            });
        }
        let body_len = body_len.unwrap_or(0);
        if body_len > BODY_BYTES_MAX as u64 {
            return Err(HttpError::BodyTooLarge(body_len));
        }
        let total = head_len + body_len as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        // `parsed` borrows `headers` too; the strings it gave out borrow only the buffer.
        let request = Request {
            method,
            path,
            query,
            auth,
            close,
            body: &self.buffer[head_len..total],
        };
        Ok(Some((request, total)))
    }

    /// Drops the `span` bytes of a request returned by [`HttpDecoder::next_request`].
    pub fn consume(&mut self, span: usize) {
        self.buffer.advance(span);
    }
}

/// A Content-Length value: digits only (RFC 9112 6.3; no sign, no list, no spaces inside).
fn content_length(value: &str) -> Result<u64, HttpError> {
    let bad = || HttpError::Malformed(format!("Content-Length {value:?} is not a number of bytes"));
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The trimmed value of a header that matters; it must be UTF-8.
fn header_text<'b>(h: &httparse::Header<'b>) -> Result<&'b str, HttpError> {
    std::str::from_utf8(h.value)
        .map(str::trim)
        .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))
}

/// `"200 OK"` and friends.
fn status_line(status: u16) -> &'static str {
    match status {
        200 => "200 OK",
        400 => "400 Bad Request",
        401 => "401 Unauthorized",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        409 => "409 Conflict",
        411 => "411 Length Required",
        413 => "413 Content Too Large",
        422 => "422 Unprocessable Content",
        429 => "429 Too Many Requests",
        431 => "431 Request Header Fields Too Large",
        503 => "503 Service Unavailable",
        500 => "500 Internal Server Error",
        _ => "",
    }
}

/// Appends a response whose body is the concatenation of `parts` (so callers can assemble a
/// body from formatted numbers without a temporary buffer). `extra` headers are written as
/// given (`Name: value`, no CRLF).
pub fn encode_response_parts(
    status: u16,
    content_type: &str,
    extra: &[&str],
    parts: &[&[u8]],
    close: bool,
    out: &mut BytesMut,
) {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut length = itoa::Buffer::new();
    let length = length.format(body_len);
    out.reserve(160 + content_type.len() + body_len);
    // Every shake and open answer is a 200 with a JSON body: one static piece for its head.
    if status == 200 && content_type == "application/json" {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ",
        );
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        match status_line(status) {
            "" => {
                out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                out.extend_from_slice(b" Status");
            }
            line => out.extend_from_slice(line.as_bytes()),
        }
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
    }
    out.extend_from_slice(length.as_bytes());
    for h in extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(h.as_bytes());
    }
    out.extend_from_slice(if close {
        b"\r\nConnection: close\r\n\r\n"
    } else {
        b"\r\n\r\n"
    });
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Appends a response. `extra` headers are written as given (`Name: value`, no CRLF).
pub fn encode_response(
    status: u16,
    content_type: &str,
    extra: &[&str],
    body: &[u8],
    close: bool,
    out: &mut BytesMut,
) {
    encode_response_parts(status, content_type, extra, &[body], close, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_error_status_has_a_status_line() {
        for code in crate::wire::ops::ALL_ERRORS {
            let line = status_line(code.http_status());
            assert!(
                line.starts_with(&code.http_status().to_string()),
                "{code:?}"
            );
        }
    }

    /// An owned copy of the next request, consumed from the decoder.
    #[derive(Debug, PartialEq, Eq)]
    struct Owned {
        method: Method,
        path: String,
        query: Option<String>,
        auth: Option<String>,
        close: bool,
        body: Vec<u8>,
    }

    fn take(d: &mut HttpDecoder) -> Result<Option<Owned>, HttpError> {
        let Some((r, span)) = d.next_request()? else {
            return Ok(None);
        };
        let owned = Owned {
            method: r.method,
            path: r.path.to_string(),
            query: r.query.map(str::to_string),
            auth: r.auth.map(|a| String::from_utf8_lossy(a).into_owned()),
            close: r.close,
            body: r.body.to_vec(),
        };
        d.consume(span);
        Ok(Some(owned))
    }

    #[test]
    fn pipelined_keep_alive_requests() {
        let mut d = HttpDecoder::new();
        d.extend(b"GET /shake?n=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\nPOST /open HTTP/1.1\r\nX-Auth: def\r\nContent-Length: 5\r\n\r\nhel");
        let a = take(&mut d).unwrap().unwrap();
        assert_eq!(
            (
                a.method,
                a.path.as_str(),
                a.query.as_deref(),
                a.auth.as_deref(),
                a.close
            ),
            (Method::Get, "/shake", Some("n=1"), Some("abc"), false)
        );
        assert_eq!(take(&mut d), Ok(None), "body incomplete");
        d.extend(b"lo");
        let b = take(&mut d).unwrap().unwrap();
        assert_eq!(
            (b.method, &b.body[..], b.auth.as_deref()),
            (Method::Post, &b"hello"[..], Some("def"))
        );
        assert_eq!(d.buffered(), 0);
        d.extend(b"GET / HTTP/1.0\r\n\r\n");
        assert!(take(&mut d).unwrap().unwrap().close);
    }

    #[test]
    fn bad_requests_get_exact_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"garbage\r\n\r\n", 400),
            (b"DELETE / HTTP/1.1\r\n\r\n", 405),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            // Framing ambiguities (RFC 9112 6.3): a server and a proxy must never disagree
            // on where a request ends.
            (
                b"POST /nope HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 5\r\n\r\nabcde", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 3,3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 3 3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
                400,
            ),
            // Obsolete line folding: a header value continued on the next line.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n 5\r\n\r\nabcde",
                400,
            ),
            (b"POST / HTTP/1.1\r\nX-Auth: a\r\n\tb\r\n\r\n", 400),
            // Whitespace before the colon.
            (b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc", 400),
        ];
        for (bytes, status) in cases {
            let mut d = HttpDecoder::new();
            d.extend(bytes);
            let e = take(&mut d).unwrap_err();
            assert_eq!(e.status(), *status, "{e}");
        }
        let mut d = HttpDecoder::new();
        d.extend(b"GET / HTTP/1.1\r\n");
        d.extend(&vec![b'a'; HEAD_BYTES_MAX]);
        assert_eq!(take(&mut d), Err(HttpError::HeadTooLarge));
        // The same length twice is one length (RFC 9112 allows it), with spaces around it.
        let mut d = HttpDecoder::new();
        d.extend(b"POST / HTTP/1.1\r\nContent-Length:  3 \r\ncontent-length: 3\r\n\r\nabc");
        assert_eq!(take(&mut d).unwrap().unwrap().body, b"abc");
    }

    #[test]
    fn responses_are_well_formed() {
        let mut out = BytesMut::new();
        encode_response(
            200,
            "text/plain",
            &["Retry-After: 1"],
            b"ok",
            false,
            &mut out,
        );
        encode_response(404, "text/plain", &[], b"", true, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\nok"));
        assert!(text.ends_with("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        // A body too large for the stack path, and a status without a known reason.
        let mut big = BytesMut::new();
        encode_response(299, "text/plain", &[], &[b'x'; 1000], false, &mut big);
        let head =
            "HTTP/1.1 299 Status\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(&big[..head.len()], head.as_bytes());
        assert_eq!(big.len(), head.len() + 1000);
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_stays_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..(HEAD_BYTES_MAX + 100))) {
            let mut d = HttpDecoder::new();
            d.extend(&bytes);
            loop {
                match take(&mut d) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        prop_assert!(d.buffered() <= HEAD_BYTES_MAX + BODY_BYTES_MAX);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn split_anywhere_gives_the_same_request(cut in 0usize..60) {
            let wire = b"POST /open HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
            let cut = cut.min(wire.len());
            let mut d = HttpDecoder::new();
            d.extend(&wire[..cut]);
            let early = take(&mut d).unwrap();
            d.extend(&wire[cut..]);
            let request = match early { Some(r) => r, None => take(&mut d).unwrap().unwrap() };
            prop_assert_eq!(&request.body[..], b"abcd");
        }
    }
}
