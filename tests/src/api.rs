//! A small HTTP/1.1 client for Taproot's control plane, over `std::net`: what the
//! end-to-end tests and `cargo xtask ctl` use. One request per connection unless a test
//! drives raw bytes itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status, headers (lower-cased names), body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// The response of a request that must have answered `status`; panics (with the body)
/// otherwise.
pub fn expect(r: std::io::Result<Response>, status: u16) -> Response {
    let r = r.unwrap();
    assert_eq!(r.status, status, "{}", r.text());
    r
}

#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: String,
    pub timeout: Duration,
}

impl Client {
    pub fn new(port: u16, token: &str) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            token: token.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends one request with `Connection: close` and reads the whole response.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: taproot\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
            self.token
        );
        if !body.is_empty() || matches!(method, "PUT" | "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.exchange(&request, false)
    }

    /// Sends `bytes` as they are, closes the sending side (so a server waiting for the rest
    /// of a truncated request sees there is no more), and parses the first response.
    pub fn raw(&self, bytes: &[u8]) -> std::io::Result<Response> {
        self.exchange(bytes, true)
    }

    fn exchange(&self, bytes: &[u8], half_close: bool) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        // A server may answer (413, 401, ...) and close before it has read the whole body:
        // a failed write is then not the end, the answer is still there to read.
        let written = stream.write_all(bytes);
        if half_close && written.is_ok() {
            stream.shutdown(std::net::Shutdown::Write)?;
        }
        let mut all = Vec::new();
        let read = stream.read_to_end(&mut all);
        if all.is_empty() {
            written?;
            read?;
        }
        parse(&all).ok_or_else(|| {
            std::io::Error::other(format!("unparsable response: {:?}", String::from_utf8_lossy(&all)))
        })
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[])
    }

    pub fn put(&self, path: &str, body: &[u8]) -> std::io::Result<Response> {
        self.request("PUT", path, body)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> std::io::Result<Response> {
        self.request("POST", path, body)
    }

    pub fn delete(&self, path: &str) -> std::io::Result<Response> {
        self.request("DELETE", path, &[])
    }
}

/// Parses one HTTP/1.1 response (status line, headers, body by Content-Length or to the
/// end).
pub fn parse(bytes: &[u8]) -> Option<Response> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[end + 4..];
    let len = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok());
    let body = match len {
        Some(len) if len <= rest.len() => rest[..len].to_vec(),
        _ => rest.to_vec(),
    };
    Some(Response { status, headers, body })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for QEMU's port forwarding).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn responses_parse_with_and_without_length() {
        let r = super::parse(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}junk").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("x-a"), Some("b"));
        let r = super::parse(b"HTTP/1.1 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(r.body, b"all of it");
        assert!(super::parse(b"HTTP/1.1 200").is_none());
    }
}
