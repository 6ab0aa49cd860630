//! `POST /v1/vms/{id}/console`: bytes typed at a guest's console, with backpressure.

use super::{Harness, TOKEN, request, running_vm};
use crate::api::mock::MOCK_CONSOLE_FIFO;
use std::format;
use std::vec;

fn type_at(h: &mut Harness, id: &str, bytes: &[u8]) -> super::Resp {
    h.exchange(&request("POST", &format!("/v1/vms/{id}/console"), Some(bytes)))
}

#[test]
fn typed_bytes_reach_the_guest_and_the_answer_counts_them() {
    let mut h = Harness::new();
    running_vm(&mut h, "c");
    let r = type_at(&mut h, "c", b"ping\n");
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({ "accepted": 5 }));
    assert_eq!(h.hv.read_console_input("c"), b"ping\n");
}

#[test]
fn a_full_fifo_accepts_fewer_bytes_and_drops_none() {
    let mut h = Harness::new();
    running_vm(&mut h, "c");
    let typed: std::vec::Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
    let r = type_at(&mut h, "c", &typed);
    assert_eq!(r.json()["accepted"], MOCK_CONSOLE_FIFO, "only what fits");
    let r = type_at(&mut h, "c", &typed[MOCK_CONSOLE_FIFO..]);
    assert_eq!(r.json()["accepted"], 0, "nothing fits until the guest reads");
    assert_eq!(h.hv.read_console_input("c"), typed[..MOCK_CONSOLE_FIFO]);
    let r = type_at(&mut h, "c", &typed[MOCK_CONSOLE_FIFO..]);
    assert_eq!(r.json()["accepted"], MOCK_CONSOLE_FIFO);
    assert_eq!(h.hv.read_console_input("c"), typed[MOCK_CONSOLE_FIFO..2 * MOCK_CONSOLE_FIFO]);
}

#[test]
fn a_created_or_paused_vm_takes_input_and_a_final_one_answers_409() {
    let mut h = Harness::new();
    assert_eq!(h.call("PUT", "/v1/vms/c", Some(r#"{"vcpus":1,"memory_mib":16}"#)).status, 201);
    assert_eq!(type_at(&mut h, "c", b"early").json()["accepted"], 5, "created: waits in the FIFO");
    running_vm(&mut h, "p");
    h.call("POST", "/v1/vms/p/actions", Some(r#"{"action":"pause"}"#));
    assert_eq!(type_at(&mut h, "p", b"x").json()["accepted"], 1, "paused");
    h.call("POST", "/v1/vms/p/actions", Some(r#"{"action":"stop"}"#));
    let r = type_at(&mut h, "p", b"late");
    assert_eq!(r.status, 409);
    assert!(r.error().contains("cannot type into the console of a VM that is stopped"), "{}", r.error());
    assert_eq!(h.hv.read_console_input("p"), b"x", "a refused request changes nothing");
}

#[test]
fn unknown_vms_are_404_wrong_tokens_401_and_large_bodies_413() {
    let mut h = Harness::new();
    running_vm(&mut h, "c");
    assert_eq!(type_at(&mut h, "nope", b"x").status, 404);
    let wrong =
        b"POST /v1/vms/c/console HTTP/1.1\r\nAuthorization: Bearer wrong\r\nContent-Length: 1\r\n\r\nx";
    let r = h.exchange(wrong);
    assert_eq!(r.status, 401);
    let big = vec![b'y'; 64 * 1024 + 1];
    let r = type_at(&mut h, "c", &big);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("the limit is 65536"), "{}", r.error());
    assert!(!r.closes(), "the body was discarded and the connection kept");
    let r = h.exchange(
        format!("POST /v1/vms/c/console HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 411);
    assert!(h.hv.read_console_input("c").is_empty(), "no refused byte reached the guest");
    let largest = vec![b'z'; 64 * 1024];
    assert_eq!(type_at(&mut h, "c", &largest).json()["accepted"], MOCK_CONSOLE_FIFO, "64 KiB is allowed");
}
