//! Host tests of the control plane, all through [`Connection`]: bytes in, bytes out,
//! responses parsed back with `httparse`, against [`MockHypervisor`].

mod bounds;
mod console_input;
mod deadlines;
mod framing;
mod fuzz;
mod longpoll;
mod openapi;
mod routes;
mod upload;

use super::mock::MockHypervisor;
use super::{ApiConfig, Connection, Limits, Token};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::format;

pub(super) const TOKEN: &str = "s3cret-token_0123";

/// A parsed response.
#[derive(Debug)]
pub(super) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The message of an error response, which must be `{"error": "..."}` and nothing else.
    pub fn error(&self) -> String {
        let value = self.json();
        let object = value.as_object().expect("error body is an object");
        assert_eq!(object.len(), 1, "error body has only `error`: {value}");
        let message = object["error"].as_str().expect("error is a string");
        assert!(!message.is_empty());
        String::from(message)
    }

    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Parses every complete response at the start of `buf`; returns them and the bytes used.
pub(super) fn parse_responses(buf: &[u8]) -> (Vec<Resp>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buf[used..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => break,
            Err(e) => {
                panic!("server sent a malformed response ({e}): {:?}", String::from_utf8_lossy(&buf[used..]))
            }
        };
        let status = response.code.expect("status");
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (String::from(h.name), String::from(core::str::from_utf8(h.value).expect("ASCII header")))
            })
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
        match status {
            100 | 204 => assert!(len.is_none(), "{status} has no Content-Length"),
            _ => assert!(len.is_some(), "every response carries Content-Length"),
        }
        let len = len.unwrap_or(0);
        if buf.len() - used - head_len < len {
            break;
        }
        let body = buf[used + head_len..used + head_len + len].to_vec();
        used += head_len + len;
        if status != 100 {
            out.push(Resp { status, headers, body });
        }
    }
    (out, used)
}

/// A client, a connection and the mock hypervisor behind it.
pub(super) struct Harness {
    pub hv: MockHypervisor,
    pub conn: Connection<MockHypervisor>,
    pub config: Arc<ApiConfig>,
    pub now: u64,
    /// Bytes the server sent and the test has not parsed yet.
    pub received: Vec<u8>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let config = Arc::new(ApiConfig { token: Token::new(TOKEN).unwrap(), limits });
        Self {
            hv: MockHypervisor::new(1024),
            conn: Connection::new(config.clone(), 0),
            config,
            now: 0,
            received: Vec::new(),
        }
    }

    /// A new connection to the same hypervisor.
    pub fn reconnect(&mut self) {
        self.conn.close(&mut self.hv);
        self.conn = Connection::new(self.config.clone(), self.now);
        self.received.clear();
    }

    /// Collects what the connection has sent.
    pub fn pump(&mut self) {
        let out = self.conn.output().to_vec();
        self.conn.consume_output(out.len(), self.now);
        self.received.extend_from_slice(&out);
    }

    /// Offers `bytes` until the connection took them all (or closed); returns how many
    /// it took.
    pub fn send(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        let mut stalls = 0;
        while taken < bytes.len() {
            let n = self.conn.receive(&bytes[taken..], self.now, &mut self.hv);
            taken += n;
            self.pump();
            if n == 0 {
                self.conn.poll(self.now, &mut self.hv);
                self.pump();
                stalls += 1;
                if stalls > 3 {
                    break;
                }
            } else {
                stalls = 0;
            }
        }
        taken
    }

    pub fn poll(&mut self) {
        self.conn.poll(self.now, &mut self.hv);
        self.pump();
    }

    /// Every complete response received so far.
    pub fn responses(&mut self) -> Vec<Resp> {
        self.pump();
        let (responses, used) = parse_responses(&self.received);
        self.received.drain(..used);
        responses
    }

    /// Sends one request and returns its one response.
    pub fn exchange(&mut self, request: &[u8]) -> Resp {
        self.send(request);
        let mut responses = self.responses();
        assert_eq!(responses.len(), 1, "one response to {:?}", String::from_utf8_lossy(request));
        responses.remove(0)
    }

    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.exchange(&request(method, path, body.map(str::as_bytes)))
    }
}

/// An authorized request; a body gets a Content-Length.
pub(super) fn request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: taproot\r\nAuthorization: Bearer {TOKEN}\r\n");
    if let Some(body) = body {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// Creates VM `id` with 1 vCPU and 16 MiB, loads a flat image and starts it.
pub(super) fn running_vm(h: &mut Harness, id: &str) {
    assert_eq!(h.call("PUT", &format!("/v1/vms/{id}"), Some(r#"{"vcpus":1,"memory_mib":16}"#)).status, 201);
    let image = request("PUT", &format!("/v1/vms/{id}/image?format=flat&load=0x7c00"), Some(&[0xF4; 512]));
    assert_eq!(h.exchange(&image).status, 200);
    assert_eq!(h.call("POST", &format!("/v1/vms/{id}/actions"), Some(r#"{"action":"start"}"#)).status, 200);
}
