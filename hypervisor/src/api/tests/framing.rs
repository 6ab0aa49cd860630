//! HTTP framing: keep-alive, pipelining, split input, `Connection: close`, framing errors,
//! timeouts, `Expect: 100-continue`, back-pressure.

use super::{Harness, Resp, TOKEN, parse_responses, request};
use crate::api::Limits;
use alloc::string::String;
use alloc::vec::Vec;
use std::format;

/// Three pipelined requests touching every body kind: JSON, image stream, none.
fn pipeline() -> Vec<u8> {
    let mut bytes = request("PUT", "/v1/vms/p", Some(br#"{"vcpus":1,"memory_mib":4}"#));
    bytes.extend(request("PUT", "/v1/vms/p/image?format=flat&load=0x7c00", Some(&[0xF4; 37])));
    bytes.extend(request("POST", "/v1/vms/p/actions", Some(br#"{"action":"start"}"#)));
    bytes.extend(request("GET", "/v1/vms/p", None));
    bytes
}

fn summary(responses: &[Resp]) -> Vec<(u16, Vec<u8>)> {
    responses.iter().map(|r| (r.status, r.body.clone())).collect()
}

#[test]
fn keep_alive_serves_several_requests_from_one_buffer_in_order() {
    let mut h = Harness::new();
    let mut bytes = pipeline();
    bytes.extend(request("GET", "/v1/nope", None));
    bytes.extend(request("GET", "/v1/info", None));
    assert_eq!(h.send(&bytes), bytes.len());
    let responses = h.responses();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 200, 200, 200, 404, 200]);
    assert_eq!(responses[3].json()["state"], "running");
    assert!(responses.iter().all(|r| !r.closes()));
    assert!(!h.conn.should_close());
}

#[test]
fn requests_split_at_every_byte_boundary_get_the_same_answers() {
    let bytes = pipeline();
    let mut whole = Harness::new();
    whole.send(&bytes);
    let expected = summary(&whole.responses());
    assert_eq!(expected.len(), 4);
    for split in 0..=bytes.len() {
        let mut h = Harness::new();
        assert_eq!(h.send(&bytes[..split]), split);
        assert_eq!(h.send(&bytes[split..]), bytes.len() - split);
        assert_eq!(summary(&h.responses()), expected, "split at {split}");
    }
    let mut h = Harness::new();
    for byte in &bytes {
        assert_eq!(h.send(core::slice::from_ref(byte)), 1);
    }
    assert_eq!(summary(&h.responses()), expected, "one byte at a time");
}

#[test]
fn connection_close_is_honoured_and_later_bytes_are_dropped() {
    let mut h = Harness::new();
    let mut raw =
        format!("GET /v1/info HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    raw.extend(request("PUT", "/v1/vms/late", Some(br#"{"vcpus":1,"memory_mib":4}"#)));
    assert_eq!(h.send(&raw), raw.len(), "a closed connection takes and drops everything");
    let responses = h.responses();
    assert_eq!(responses.len(), 1);
    assert!(responses[0].closes());
    assert!(h.conn.should_close());
    assert!(h.hv.vms.is_empty(), "the request after `Connection: close` was not handled");
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let mut h = Harness::new();
    let r = h.exchange(format!("GET /v1/info HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200);
    assert!(r.closes() && h.conn.should_close());
    h.reconnect();
    let raw =
        format!("GET /v1/info HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let r = h.exchange(raw.as_bytes());
    assert!(!r.closes() && !h.conn.should_close());
}

/// Sends `raw` on a fresh connection: one error response, then the connection closes.
fn framing_error(raw: &[u8]) -> Resp {
    let mut h = Harness::new();
    h.send(raw);
    let mut responses = h.responses();
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(raw));
    let r = responses.remove(0);
    assert!(r.closes(), "framing errors close: {:?}", String::from_utf8_lossy(raw));
    assert!(h.conn.should_close());
    assert!(h.hv.calls.is_empty(), "the handler never saw it");
    r
}

#[test]
fn framing_errors_are_answered_and_close_the_connection() {
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let cases: Vec<(String, u16, &str)> = std::vec![
        (
            format!(
                "PUT /v1/vms/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            411,
            "chunked"
        ),
        (
            format!("PUT /v1/vms/a HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"),
            400,
            "Transfer-Encoding"
        ),
        (
            format!("PUT /v1/vms/a HTTP/1.1\r\n{auth}Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}"),
            400,
            "more than once"
        ),
        (format!("PUT /v1/vms/a HTTP/1.1\r\n{auth}Content-Length: -1\r\n\r\n"), 400, "decimal"),
        (format!("PUT /v1/vms/a HTTP/1.1\r\n{auth}Content-Length: 1e3\r\n\r\n"), 400, "decimal"),
        (
            format!("PUT /v1/vms/a HTTP/1.1\r\n{auth}Content-Length: 99999999999999999999999\r\n\r\n"),
            413,
            "64 bits"
        ),
        (format!("GET /v1/info HTTP/1.1\r\n{auth}X-Big: {}\r\n\r\n", "a".repeat(9000)), 431, "8192"),
        (format!("GET /v1/info HTTP/1.1\r\n{auth}{}\r\n", "X-A: b\r\n".repeat(40)), 431, "header fields"),
        (format!("GET /v1/info HTTP/1.1\r\n{auth}Expect: teapot\r\n\r\n"), 417, "100-continue"),
        ("GET http://example/v1/info HTTP/1.1\r\n\r\n".into(), 400, "origin form"),
        ("\u{1}\u{2}\u{3}garbage\r\n\r\n".into(), 400, "malformed HTTP request"),
        ("GET /v1/info HTTP/9.9\r\n\r\n".into(), 400, "malformed HTTP request"),
        ("GET /v1/info\r\n\r\n".into(), 400, "malformed HTTP request"),
        ("GET  /v1/info HTTP/1.1\r\nBad Header\r\n\r\n".into(), 400, "malformed HTTP request"),
    ];
    for (raw, status, needle) in cases {
        let r = framing_error(raw.as_bytes());
        assert_eq!(r.status, status, "{raw:?}: {}", r.error_or_body());
        assert!(r.error().contains(needle), "{raw:?}: `{}` lacks `{needle}`", r.error());
    }
    // Invalid UTF-8 and binary in the request line and in header values.
    for raw in [
        &b"GET /v1/\xff\xfe HTTP/1.1\r\n\r\n"[..],
        b"GET /v1/info HTTP/1.1\r\nX: \x00\r\n\r\n",
        b"\xc3\x28\r\n\r\n",
    ] {
        let r = framing_error(raw);
        assert_eq!(r.status, 400, "{raw:?}");
    }
}

#[test]
fn a_truncated_request_times_out_with_408() {
    let mut h = Harness::new();
    h.send(b"GET /v1/info HTTP/1.1\r\nAuthoriz");
    h.now = 9_999;
    h.poll();
    assert!(h.responses().is_empty() && !h.conn.should_close());
    assert_eq!(h.conn.deadline_ms(), Some(10_000), "the head timeout");
    h.now = 10_000;
    h.poll();
    let r = h.responses().remove(0);
    assert_eq!(r.status, 408);
    assert!(r.closes() && h.conn.should_close());
}

#[test]
fn a_slow_head_times_out_even_while_bytes_trickle_in() {
    let mut h = Harness::new();
    let raw = request("GET", "/v1/info", None);
    for byte in &raw[..raw.len() - 1] {
        h.now += 200;
        h.send(core::slice::from_ref(byte));
        h.poll();
        if h.conn.should_close() {
            break;
        }
    }
    assert!(h.conn.should_close(), "a head that takes more than 10 s is cut off");
    assert_eq!(h.responses().remove(0).status, 408);
}

#[test]
fn an_idle_connection_closes_silently_and_a_busy_one_stays() {
    let mut h = Harness::new();
    assert_eq!(h.exchange(&request("GET", "/v1/info", None)).status, 200);
    h.now = 59_999;
    h.poll();
    assert!(!h.conn.should_close());
    assert_eq!(h.exchange(&request("GET", "/v1/info", None)).status, 200);
    h.now = 59_999 + 59_999;
    h.poll();
    assert!(!h.conn.should_close(), "the second request reset the idle clock");
    assert_eq!(h.conn.deadline_ms(), Some(59_999 + 60_000));
    h.now = 59_999 + 60_000;
    h.poll();
    assert!(h.conn.should_close());
    assert!(h.responses().is_empty(), "nothing is sent to an idle connection");
}

#[test]
fn a_peer_that_never_reads_its_answers_is_dropped() {
    let mut h = Harness::new();
    h.conn.receive(&request("GET", "/v1/info", None), 0, &mut h.hv);
    assert!(!h.conn.output().is_empty());
    h.conn.poll(60_000, &mut h.hv);
    assert!(h.conn.should_close(), "output unread for the idle timeout is dropped");
    assert!(h.conn.output().is_empty());
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let mut h = Harness::new();
    let body = br#"{"vcpus":1,"memory_mib":4}"#;
    let head = format!(
        "PUT /v1/vms/e HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-Continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h.send(head.as_bytes());
    h.pump();
    assert_eq!(h.received, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.send(body);
    let responses = h.responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 201);

    // Refused before the body: the client may or may not send it, so the connection ends.
    let head = format!(
        "PUT /v1/vms/e/nothing HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h.send(head.as_bytes());
    let r = h.responses().remove(0);
    assert_eq!(r.status, 404);
    assert!(r.closes() && h.conn.should_close());
}

#[test]
fn the_body_of_a_rejected_request_is_skipped_and_the_next_request_served() {
    let mut h = Harness::new();
    let body = "GET /v1/info HTTP/1.1\r\n\r\n";
    let mut bytes =
        format!("PUT /v1/vms/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes();
    bytes.extend(request("GET", "/v1/vms", None));
    h.send(&bytes);
    let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200], "the body that looks like a request was skipped");
}

#[test]
fn a_full_output_backlog_holds_further_requests_back() {
    let limits = Limits { max_output_backlog: 1024, ..Limits::default() };
    let mut h = Harness::with_limits(limits);
    let one = request("GET", "/v1/info", None);
    let count = 2000;
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * count).collect();
    let taken = h.conn.receive(&many, 0, &mut h.hv);
    assert!(taken < many.len(), "input stops while the answers are not read");
    assert!(
        taken <= Limits::default().max_head_bytes + Limits::default().max_json_body,
        "input stays bounded"
    );
    let backlog = h.conn.output().len();
    assert!((1024..2048).contains(&backlog), "the backlog stays bounded: {backlog}");
    let mut sent = taken;
    let mut out = Vec::new();
    for _ in 0..100_000 {
        out.extend_from_slice(h.conn.output());
        let n = h.conn.output().len();
        h.conn.consume_output(n, 0);
        h.conn.poll(0, &mut h.hv);
        if sent < many.len() {
            sent += h.conn.receive(&many[sent..], 0, &mut h.hv);
        } else if h.conn.output().is_empty() {
            break;
        }
    }
    let (responses, _) = parse_responses(&out);
    assert_eq!(responses.len(), count);
    assert!(responses.iter().all(|r| r.status == 200));
}
