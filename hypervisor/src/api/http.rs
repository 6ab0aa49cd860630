//! HTTP/1.1 on the wire: parsing a request head (with `httparse`) into the few facts the
//! connection needs, and rendering responses. Only `Content-Length` framing is accepted;
//! every way a head can be malformed is an [`ApiError`] (and the connection then closes).

use super::Limits;
use super::auth::Token;
use super::error::ApiError;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 32;

/// What the connection needs from a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target (path and query), origin form.
    pub target: String,
    /// Whether the client keeps the connection open after this request (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    pub content_length: Option<u64>,
    /// Exactly one `Authorization` header, carrying the right bearer token.
    pub is_authorized: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before the body.
    pub expects_continue: bool,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete,
/// `Ok(Some((head length, head)))` once complete. Any error is a framing error.
pub fn parse_head(buf: &[u8], limits: &Limits, token: &Token) -> Result<Option<(usize, Head)>, ApiError> {
    let too_large = || {
        ApiError::HeadersTooLarge(format!(
            "the request head is larger than {} bytes or has more than {MAX_HEADERS} header fields; send fewer \
             or shorter headers",
            limits.max_head_bytes
        ))
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "malformed HTTP request ({e}); send HTTP/1.1 such as `GET /v1/info HTTP/1.1` with header lines \
                 ending in CRLF"
            )));
        }
    };
    if len > limits.max_head_bytes {
        return Err(too_large());
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(ApiError::Internal("httparse completed a request without its request line".into()));
    };
    if !target.starts_with('/') {
        return Err(ApiError::BadRequest(
            "the request target must be a path such as /v1/info (origin form), not a full URL".into(),
        ));
    }
    let mut head = Head {
        method: String::from(method),
        target: String::from(target),
        keep_alive: version == 1,
        content_length: None,
        is_authorized: false,
        expects_continue: false,
    };
    let mut authorizations = 0;
    for header in request.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            if head.content_length.is_some() {
                return Err(ApiError::BadRequest(
                    "Content-Length is given more than once; give it once".into(),
                ));
            }
            head.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(if contains_token(value, b"chunked") {
                ApiError::LengthRequired(
                    "chunked transfer encoding is not supported: send the body with a Content-Length (curl: \
                     --data-binary @FILE or -T FILE, not from a pipe)"
                        .into(),
                )
            } else {
                ApiError::BadRequest(
                    "Transfer-Encoding is not supported; send the body with a Content-Length".into(),
                )
            });
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_token(value, b"close") {
                head.keep_alive = false;
            } else if contains_token(value, b"keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorizations += 1;
            head.is_authorized = token.authorizes(value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(ApiError::ExpectationFailed);
            }
            head.expects_continue = true;
        }
    }
    head.is_authorized &= authorizations == 1;
    Ok(Some((len, head)))
}

fn parse_content_length(value: &[u8]) -> Result<u64, ApiError> {
    let bad = || ApiError::BadRequest("Content-Length must be one decimal number of bytes".into());
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut n: u64 = 0;
    for &digit in value {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
            .ok_or_else(|| ApiError::PayloadTooLarge("Content-Length does not fit in 64 bits".into()))?;
    }
    Ok(n)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|part| trim(part).eq_ignore_ascii_case(token))
}

/// A response about to be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub const JSON: &'static str = "application/json";
    pub const BYTES: &'static str = "application/octet-stream";

    /// A JSON response; a value that cannot be serialized is our bug (500).
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self { status, content_type: Some(Self::JSON), headers: Vec::new(), body },
            Err(e) => Self::error(&ApiError::Internal(format!("cannot serialize the response: {e}"))),
        }
    }

    /// `204 No Content`.
    #[must_use]
    pub fn no_content() -> Self {
        Self { status: 204, content_type: None, headers: Vec::new(), body: Vec::new() }
    }

    /// The error's status, its JSON body, and the headers its status requires.
    #[must_use]
    pub fn error(e: &ApiError) -> Self {
        let mut headers = Vec::new();
        match e {
            ApiError::Unauthorized => headers.push(("WWW-Authenticate", String::from("Bearer"))),
            ApiError::MethodNotAllowed { allow, .. } => headers.push(("Allow", String::from(*allow))),
            _ => {}
        }
        Self { status: e.status(), content_type: Some(Self::JSON), headers, body: e.to_json().into_bytes() }
    }

    /// Appends the response to `out`; `close` adds `Connection: close`.
    pub fn render(&self, close: bool, out: &mut Vec<u8>) {
        let mut head = String::new();
        let _ = write!(head, "HTTP/1.1 {} {}\r\nServer: taproot\r\n", self.status, reason(self.status));
        if let Some(content_type) = self.content_type {
            let _ = write!(head, "Content-Type: {content_type}\r\n");
        }
        if self.status != 204 {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// The interim response a client with `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of every status the API answers with.
#[must_use]
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
