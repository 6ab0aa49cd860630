//! Property tests: thousands of random and mutated requests (truncated, huge lengths,
//! invalid JSON, binary garbage), fed in random pieces. None panics; every answer is
//! well-formed HTTP with a known status and, for errors, a JSON message; the connection is
//! either ready for the next request (and answers it correctly) or closes; and afterwards
//! a fresh connection to the same hypervisor still works.

use super::{Harness, Resp, request};
use alloc::string::String;
use alloc::vec::Vec;
use proptest::prelude::*;
use std::format;

/// Every status the API can answer with; 500 would be a bug and is not here.
const KNOWN: &[u16] = &[200, 201, 204, 400, 401, 404, 405, 408, 409, 411, 413, 417, 422, 431, 503];

/// Requests that work on a fresh hypervisor, the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = std::vec![
        request("GET", "/v1/info", None),
        request("PUT", "/v1/vms/f", Some(br#"{"vcpus":1,"memory_mib":4}"#)),
        request(
            "PUT",
            "/v1/vms/f/memslots/2",
            Some(br#"{"guest_address":1073741824,"size":8192,"dirty_log":true}"#)
        ),
        request("PUT", "/v1/vms/f/image?format=flat&load=0x7c00", Some(&[0xF4; 64])),
        request("POST", "/v1/vms/f/actions", Some(br#"{"action":"start"}"#)),
        request("GET", "/v1/vms/f/console?offset=0&max=16&wait_ms=10", None),
        request("GET", "/v1/vms/f/stats", None),
        request("DELETE", "/v1/vms/f/memslots/2", None),
        request("DELETE", "/v1/vms/f", None),
        request("GET", "/v1/vms", None),
    ];
    let all: Vec<u8> = seeds.concat();
    seeds.push(all);
    seeds
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    HugeLength,
    DuplicateHeader { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        Just(Mutation::HugeLength),
        any::<usize>().prop_map(|at| Mutation::DuplicateHeader { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match m {
        Mutation::Flip { at, byte } if !bytes.is_empty() => {
            let i = at % bytes.len();
            bytes[i] = *byte;
        }
        Mutation::Flip { .. } => {}
        Mutation::Insert { at, bytes: new } => {
            let i = pos(*at, bytes.len());
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = pos(*at, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate { at } => bytes.truncate(pos(*at, bytes.len())),
        Mutation::HugeLength => {
            if let Some(i) = bytes.windows(16).position(|w| w == b"Content-Length: ") {
                bytes.splice(i + 16..i + 16, b"18446744073709".iter().copied());
            }
        }
        Mutation::DuplicateHeader { at } => {
            let ends: Vec<usize> =
                bytes.windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(i, _)| i).collect();
            if ends.len() >= 2 {
                let k = at % (ends.len() - 1);
                let (start, end) = (ends[k] + 2, ends[k + 1] + 2);
                let line = bytes[start..end].to_vec();
                bytes.splice(start..start, line);
            }
        }
    }
}

/// The invariants every answer keeps.
fn check_response(r: &Resp) {
    assert!(KNOWN.contains(&r.status), "unexpected status {}: {}", r.status, r.error_or_body());
    if r.status >= 400 {
        assert!(!r.error().is_empty());
    }
}

/// Feeds `bytes` in pieces of the given sizes, then checks the connection and the
/// hypervisor.
fn run(bytes: &[u8], pieces: &[usize]) {
    let mut h = Harness::new();
    let mut at = 0;
    for &piece in pieces.iter().cycle().take(bytes.len() + 1) {
        if at >= bytes.len() {
            break;
        }
        let end = (at + piece.max(1)).min(bytes.len());
        h.send(&bytes[at..end]);
        at = end;
    }
    // Let long-polls end.
    h.now += 20;
    h.poll();
    for r in h.responses() {
        check_response(&r);
    }
    if h.conn.is_idle() && !h.conn.should_close() {
        // Ready for another request: it must be answered correctly.
        let r = h.exchange(&request("GET", "/v1/info", None));
        assert_eq!(r.status, 200);
    } else if !h.conn.should_close() {
        // Mid-request: the timeouts end it.
        h.now += 60_000;
        h.poll();
        for r in h.responses() {
            check_response(&r);
        }
        assert!(h.conn.should_close(), "a connection stuck mid-request is closed by its timeouts");
    }
    // The hypervisor is consistent, and a fresh connection is served.
    let used: u64 = h.hv.vms.values().map(|vm| vm.config.memory_mib).sum();
    assert_eq!(used + h.hv.free_memory_mib, h.hv.total_memory_mib);
    h.reconnect();
    assert!(h.hv.vms.values().all(|vm| !vm.is_uploading), "closing aborted every upload");
    let r = h.exchange(&request("GET", "/v1/vms", None));
    assert_eq!(r.status, 200);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_requests_never_panic_and_leave_a_working_server(
        seed in 0usize..11,
        mutations in proptest::collection::vec(mutation(), 1..4),
        pieces in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut bytes = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        run(&bytes, &pieces);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn binary_garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        pieces in proptest::collection::vec(1usize..512, 1..8),
    ) {
        run(&bytes, &pieces);
    }

    #[test]
    fn garbage_after_a_valid_head_never_panics(
        route in 0usize..4,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (method, path) = [
            ("PUT", "/v1/vms/g"),
            ("PUT", "/v1/vms/g/memslots/1"),
            ("POST", "/v1/vms/g/actions"),
            ("PUT", "/v1/vms/g/image?format=elf"),
        ][route];
        let mut bytes = request("PUT", "/v1/vms/g", Some(br#"{"vcpus":1,"memory_mib":2}"#));
        bytes.extend(request(method, path, Some(&body)));
        run(&bytes, &[7, 300, 1]);
    }

    #[test]
    fn arbitrary_json_bodies_get_4xx_not_500(
        route in 0usize..3,
        body in "[{}\\[\\]\":,0-9a-z_ .-]{0,80}",
    ) {
        let mut h = Harness::new();
        h.call("PUT", "/v1/vms/j", Some(r#"{"vcpus":1,"memory_mib":2}"#));
        let path = ["/v1/vms/k", "/v1/vms/j/memslots/5", "/v1/vms/j/actions"][route];
        let method = if route == 2 { "POST" } else { "PUT" };
        let r = h.call(method, path, Some(&body));
        check_response(&r);
        prop_assert!(!r.closes());
        prop_assert_eq!(h.call("GET", "/v1/info", None).status, 200);
    }

    #[test]
    fn arbitrary_query_strings_get_4xx_not_500(
        route in 0usize..2,
        query in "[a-z_=&%0-9xA-F+]{0,60}",
    ) {
        let mut h = Harness::new();
        h.call("PUT", "/v1/vms/q", Some(r#"{"vcpus":1,"memory_mib":2}"#));
        let r = if route == 0 {
            h.call("GET", &format!("/v1/vms/q/console?{query}"), None)
        } else {
            h.exchange(&request("PUT", &format!("/v1/vms/q/image?{query}"), Some(&[0xF4; 8])))
        };
        check_response(&r);
        prop_assert!(!r.closes());
    }
}

#[test]
fn the_seeds_themselves_all_succeed() {
    let mut h = Harness::new();
    for seed in &seeds()[..10] {
        h.send(seed);
        h.now += 20;
        h.poll();
        let r = h.responses().remove(0);
        assert!(r.status < 300, "{}: {}", String::from_utf8_lossy(seed), r.error_or_body());
    }
}
