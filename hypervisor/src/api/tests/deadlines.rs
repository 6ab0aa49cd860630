//! Request deadlines with a fake clock: trickled bytes hold no connection past them, and
//! the connection tells that it timed out and whether it is authenticated.

use super::{Harness, TOKEN, request};
use crate::api::admission::body_time_ms;
use std::format;

#[test]
fn a_connection_that_sends_nothing_closes_after_the_head_timeout() {
    let mut h = Harness::new();
    let limits = h.config.limits;
    assert_eq!(h.conn.deadline_ms(), Some(limits.head_timeout_ms), "the first head is due");
    h.now = limits.head_timeout_ms - 1;
    h.poll();
    assert!(!h.conn.should_close());
    h.now = limits.head_timeout_ms;
    h.poll();
    assert!(h.conn.should_close() && h.conn.timed_out());
    assert!(h.responses().is_empty(), "nothing is sent to a silent connection");
}

#[test]
fn a_trickled_json_body_is_cut_off_at_its_deadline() {
    let mut h = Harness::new();
    let body = br#"{"vcpus":1,"memory_mib":16}"#;
    let raw = request("PUT", "/v1/vms/a", Some(body));
    let head_len = raw.len() - body.len();
    h.send(&raw[..head_len]);
    let due = body_time_ms(&h.config.limits, body.len() as u64);
    assert_eq!(h.conn.deadline_ms(), Some(due));
    // One byte each 20 s (below the 60 s idle timeout) would take 9 minutes.
    for byte in &raw[head_len..] {
        h.now += 20_000;
        h.poll();
        if h.conn.should_close() {
            break;
        }
        h.send(core::slice::from_ref(byte));
    }
    assert!(h.conn.should_close() && h.conn.timed_out());
    assert!(h.now <= due + 20_000);
    assert_eq!(h.responses().remove(0).status, 408);
    assert!(h.hv.vms.is_empty(), "the request was not handled");
}

#[test]
fn a_large_upload_gets_time_in_proportion_to_its_length() {
    let mut h = Harness::new();
    assert_eq!(h.call("PUT", "/v1/vms/a", Some(r#"{"vcpus":1,"memory_mib":64}"#)).status, 201);
    let len = 16u64 << 20;
    let head = format!(
        "PUT /v1/vms/a/image?format=flat&load=0x10000&entry=0x10000 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    h.send(head.as_bytes());
    let due = body_time_ms(&h.config.limits, len);
    assert!(due > h.config.limits.body_timeout_ms + 200_000, "16 MiB at 64 KiB/s is 256 s");
    // A steady trickle keeps the idle timer quiet; the deadline still ends it.
    while !h.conn.should_close() {
        h.now += 1000;
        h.send(&[0; 512]);
        h.poll();
        assert!(h.now <= due, "closed at its deadline");
    }
    assert_eq!(h.now, due);
    assert!(h.conn.timed_out());
    assert_eq!(h.responses().remove(0).status, 408);
    assert!(h.hv.calls.iter().any(|c| c == "abort_image a"));
}

#[test]
fn a_connection_is_authenticated_once_a_head_carries_the_token() {
    let mut h = Harness::new();
    assert!(!h.conn.is_authenticated());
    let r = h.exchange(b"GET /v1/info HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n");
    assert_eq!(r.status, 401);
    assert!(!h.conn.is_authenticated(), "a wrong token does not count");
    assert_eq!(h.call("GET", "/v1/info", None).status, 200);
    assert!(h.conn.is_authenticated());
    assert!(!h.conn.timed_out());
}
