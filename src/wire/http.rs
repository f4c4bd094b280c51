//! The HTTP/1.1 subset the appliance speaks, for wrk, curl and load balancers: keep-alive,
//! pipelined requests, small bodies, a few headers that matter. Parsing is `httparse`; this
//! module bounds everything, extracts what the handlers need, and writes responses.
//!
//! Sans-IO: bytes in, requests out; responses appended to an output buffer. Runs on the core
//! that owns the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Largest request body (a shake token in hex is 128 bytes).
pub const BODY_BYTES_MAX: usize = 4 * 1024;
/// Most headers parsed per request.
pub const HEADERS_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// What a handler needs from one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// `Authorization: Bearer <token>`, or an `X-Auth` header.
    pub auth: Option<String>,
    /// The client asked to close after this response (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    pub body: Bytes,
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

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole request, `Ok(None)` when more bytes are needed, or why the connection
    /// must be answered with an error and closed.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&self.buffer) {
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
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        let http10 = parsed.version == Some(0);
        let mut close = http10;
        let mut auth = None;
        let mut body_len: u64 = 0;
        for h in parsed.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
                .trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = value
                    .parse()
                    .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(HttpError::Chunked);
            } else if h.name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            } else if h.name.eq_ignore_ascii_case("authorization") {
                auth = value.strip_prefix("Bearer ").map(|t| t.trim().to_string());
            } else if h.name.eq_ignore_ascii_case("x-auth") {
                auth = Some(value.to_string());
            }
        }
        if body_len > BODY_BYTES_MAX as u64 {
            return Err(HttpError::BodyTooLarge(body_len));
        }
        let total = head_len + body_len as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        self.buffer.advance(head_len);
        let body = self.buffer.split_to(body_len as usize).freeze();
        Ok(Some(Request {
            method,
            path,
            query,
            auth,
            close,
            body,
        }))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
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
    use std::fmt::Write;
    let mut head = String::with_capacity(128);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "\r\n"
    });
    out.reserve(head.len() + body.len());
    out.put_slice(head.as_bytes());
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pipelined_keep_alive_requests() {
        let mut d = HttpDecoder::new();
        d.extend(b"GET /shake?n=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\nPOST /open HTTP/1.1\r\nX-Auth: def\r\nContent-Length: 5\r\n\r\nhel");
        let a = d.next_request().unwrap().unwrap();
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
        assert_eq!(d.next_request(), Ok(None), "body incomplete");
        d.extend(b"lo");
        let b = d.next_request().unwrap().unwrap();
        assert_eq!(
            (b.method, &b.body[..], b.auth.as_deref()),
            (Method::Post, &b"hello"[..], Some("def"))
        );
        assert_eq!(d.buffered(), 0);
        d.extend(b"GET / HTTP/1.0\r\n\r\n");
        assert!(d.next_request().unwrap().unwrap().close);
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
        ];
        for (bytes, status) in cases {
            let mut d = HttpDecoder::new();
            d.extend(bytes);
            let e = d.next_request().unwrap_err();
            assert_eq!(e.status(), *status, "{e}");
        }
        let mut d = HttpDecoder::new();
        d.extend(b"GET / HTTP/1.1\r\n");
        d.extend(&vec![b'a'; HEAD_BYTES_MAX]);
        assert_eq!(d.next_request(), Err(HttpError::HeadTooLarge));
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
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_stays_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..(HEAD_BYTES_MAX + 100))) {
            let mut d = HttpDecoder::new();
            d.extend(&bytes);
            loop {
                match d.next_request() {
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
            let early = d.next_request().unwrap();
            d.extend(&wire[cut..]);
            let request = match early { Some(r) => r, None => d.next_request().unwrap().unwrap() };
            prop_assert_eq!(&request.body[..], b"abcd");
        }
    }
}
