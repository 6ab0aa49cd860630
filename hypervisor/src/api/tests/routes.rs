//! Every route, and every error status a request can provoke, through the connection.

use super::{Harness, TOKEN, request, running_vm};
use crate::api::error::ApiError;
use crate::api::http::Response;
use crate::api::{Token, constant_time_eq};
use crate::vm::VmStats;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::format;

const VM: &str = r#"{"vcpus": 2, "memory_mib": 64}"#;

#[test]
fn info_describes_the_hypervisor() {
    let mut h = Harness::new();
    let r = h.call("GET", "/v1/info", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let info = r.json();
    assert_eq!(info["cpus"], 2);
    assert_eq!(info["backend"], "mock");
    assert_eq!(info["memory_free_bytes"], 1024u64 << 20);
    assert_eq!(info["memory_assigned_bytes"], 0);
    assert!(info["version"].is_string());
    h.call("PUT", "/v1/vms/a", Some(VM));
    let info = h.call("GET", "/v1/info", None).json();
    assert_eq!(info["memory_assigned_bytes"], 64u64 << 20, "{info}");
}

#[test]
fn a_vm_goes_through_every_route() {
    let mut h = Harness::new();
    let r = h.call("PUT", "/v1/vms/web-1", Some(VM));
    assert_eq!(r.status, 201, "{}", r.error_or_body());
    assert_eq!(r.json()["state"], "created");
    assert_eq!(r.json()["memslots"][0]["size"], 64u64 << 20);

    let r = h.call("GET", "/v1/vms/web-1", None);
    assert_eq!((r.status, r.json()["vcpus"].as_u64()), (200, Some(2)));

    h.call("PUT", "/v1/vms/db_2", Some(r#"{"vcpus":1,"memory_mib":16}"#));
    let r = h.call("GET", "/v1/vms", None);
    let ids: Vec<String> = r.json()["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| String::from(vm["id"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, ["db_2", "web-1"]);

    let slot = r#"{"guest_address": 1073741824, "size": 2097152, "read_only": true, "dirty_log": false, "address_space": 0}"#;
    let r = h.call("PUT", "/v1/vms/web-1/memslots/3", Some(slot));
    assert_eq!(r.status, 201, "{}", r.error_or_body());
    assert_eq!(r.json()["read_only"], true);
    let r = h.call(
        "PUT",
        "/v1/vms/web-1/memslots/4",
        Some(r#"{"guest_address": 0, "size": 4096, "address_space": 1}"#),
    );
    assert_eq!(r.status, 201, "defaults apply and the alternate space is separate: {}", r.error_or_body());
    assert_eq!(h.call("GET", "/v1/vms/web-1", None).json()["memslots"].as_array().unwrap().len(), 3);
    let r = h.call("DELETE", "/v1/vms/web-1/memslots/3", None);
    assert_eq!((r.status, r.body.len()), (204, 0));

    let image = request("PUT", "/v1/vms/web-1/image?format=flat&load=0x7c00&entry=31744", Some(&[0x90; 600]));
    let r = h.exchange(&image);
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!(r.json()["bytes"], 600);
    assert_eq!(r.json()["entry"], 0x7c00);
    assert_eq!(r.json()["protocol"], "flat");

    for (action, state) in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        // A stop answers at once; the final state shows in the next GET.
        ("stop", "stopping"),
        ("reset", "created"),
    ] {
        let r = h.call("POST", "/v1/vms/web-1/actions", Some(&format!(r#"{{"action": "{action}"}}"#)));
        assert_eq!(r.status, 200, "{action}: {}", r.error_or_body());
        assert_eq!(r.json()["state"], state, "after {action}");
        if action == "stop" {
            assert_eq!(h.call("GET", "/v1/vms/web-1", None).json()["state"], "stopped");
        }
    }

    h.hv.write_console("web-1", b"hello\n");
    let r = h.call("GET", "/v1/vms/web-1/console?offset=0&max=100", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, b"hello\n");
    assert_eq!(r.header("x-console-next-offset"), Some("6"));
    assert_eq!(r.header("x-console-missed"), Some("0"));
    assert_eq!(r.header("x-vm-state"), Some("created"));

    let r = h.call("GET", "/v1/vms/web-1/stats", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["exits"]["io"], 6, "the mock counts an I/O exit per console byte");
    assert_eq!(r.json()["mmu"]["roots_allocated"], 0);

    assert_eq!(h.call("DELETE", "/v1/vms/web-1", None).status, 204);
    assert_eq!(h.call("GET", "/v1/vms/web-1", None).status, 404);
    assert_eq!(h.hv.free_memory_mib, 1024 - 16, "the deleted VM's memory is free again");
}

#[test]
fn console_reads_from_an_offset_and_reports_missed_bytes() {
    let mut h = Harness::new();
    h.hv.console_bytes = 8;
    running_vm(&mut h, "c");
    h.hv.write_console("c", b"0123456789abcdef");
    let r = h.call("GET", "/v1/vms/c/console?offset=2&max=4", None);
    assert_eq!(r.body, b"89ab");
    assert_eq!(r.header("x-console-missed"), Some("6"));
    assert_eq!(r.header("x-console-next-offset"), Some("12"));
    let r = h.call("GET", "/v1/vms/c/console?offset=12", None);
    assert_eq!((r.body.as_slice(), r.header("x-console-next-offset")), (&b"cdef"[..], Some("16")));
    let r = h.call("GET", "/v1/vms/c/console?offset=99", None);
    assert_eq!((r.body.len(), r.header("x-console-next-offset")), (0, Some("16")));
}

#[test]
fn the_lifecycle_allows_exactly_the_documented_transitions() {
    // (state reached by the setup, action, expected status, state after)
    let table: &[(&[&str], &str, u16, &str)] = &[
        (&[], "start", 200, "running"),
        (&[], "pause", 409, "created"),
        (&[], "resume", 409, "created"),
        (&[], "stop", 409, "created"),
        (&[], "reset", 409, "created"),
        (&["start"], "start", 409, "running"),
        (&["start"], "resume", 409, "running"),
        (&["start"], "pause", 200, "paused"),
        (&["start"], "stop", 200, "stopped"),
        (&["start"], "reset", 200, "created"),
        (&["start", "pause"], "pause", 409, "paused"),
        (&["start", "pause"], "start", 409, "paused"),
        (&["start", "pause"], "resume", 200, "running"),
        (&["start", "pause"], "stop", 200, "stopped"),
        (&["start", "stop"], "start", 409, "stopped"),
        (&["start", "stop"], "stop", 409, "stopped"),
        (&["start", "stop"], "reset", 200, "created"),
    ];
    for (setup, action, status, after) in table {
        let mut h = Harness::new();
        h.call("PUT", "/v1/vms/a", Some(VM));
        h.exchange(&request("PUT", "/v1/vms/a/image?format=flat&load=0x1000", Some(&[0xF4; 16])));
        for step in *setup {
            let r = h.call("POST", "/v1/vms/a/actions", Some(&format!(r#"{{"action":"{step}"}}"#)));
            assert_eq!(r.status, 200);
        }
        let r = h.call("POST", "/v1/vms/a/actions", Some(&format!(r#"{{"action":"{action}"}}"#)));
        assert_eq!(r.status, *status, "{setup:?} then {action}: {}", r.error_or_body());
        if *status == 409 {
            assert!(r.error().contains(&format!("cannot {action} a VM that is")), "{}", r.error());
        }
        assert_eq!(h.call("GET", "/v1/vms/a", None).json()["state"], *after, "{setup:?} then {action}");
    }
    let mut h = Harness::new();
    running_vm(&mut h, "e");
    h.hv.guest_exits("e", 7);
    let r = h.call("GET", "/v1/vms/e", None);
    assert_eq!((r.json()["state"].as_str(), r.json()["exit_status"].as_u64()), (Some("exited"), Some(7)));
    assert_eq!(h.call("POST", "/v1/vms/e/actions", Some(r#"{"action":"start"}"#)).status, 409);
}

#[test]
fn slots_change_in_every_state_but_a_final_one() {
    let mut h = Harness::new();
    running_vm(&mut h, "s");
    let slot = Some(r#"{"guest_address": 16777216, "size": 4096}"#);
    assert_eq!(h.call("PUT", "/v1/vms/s/memslots/1", slot).status, 201, "running");
    h.call("POST", "/v1/vms/s/actions", Some(r#"{"action":"pause"}"#));
    assert_eq!(h.call("DELETE", "/v1/vms/s/memslots/1", None).status, 204, "paused");
    h.hv.guest_exits("s", 0);
    let r = h.call("PUT", "/v1/vms/s/memslots/1", slot);
    assert_eq!(r.status, 409);
    assert!(r.error().contains("cannot add a memory slot to a VM that is exited"), "{}", r.error());
    let r = h.call("DELETE", "/v1/vms/s/memslots/0", None);
    assert_eq!(r.status, 409);
    assert!(r.error().contains("cannot delete a memory slot of a VM that is exited"), "{}", r.error());
    h.call("POST", "/v1/vms/s/actions", Some(r#"{"action":"reset"}"#));
    assert_eq!(h.call("PUT", "/v1/vms/s/memslots/1", slot).status, 201, "created again");
}

#[test]
fn requests_without_the_token_get_401_and_change_nothing() {
    let mut h = Harness::new();
    let bodies = [
        "PUT /v1/vms/x HTTP/1.1\r\nContent-Length: 31\r\n\r\n{\"vcpus\": 1, \"memory_mib\": 16}\n"
            .to_string(),
        "PUT /v1/vms/x HTTP/1.1\r\nAuthorization: Bearer wrong\r\nContent-Length: 2\r\n\r\n{}".to_string(),
        format!("GET /v1/vms HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n"),
        format!("GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer {TOKEN}x\r\n\r\n"),
        "GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n".to_string(),
        format!(
            "GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
        "GET /v1/nothing-here HTTP/1.1\r\n\r\n".to_string(),
    ];
    for raw in &bodies {
        let r = h.exchange(raw.as_bytes());
        assert_eq!(r.status, 401, "{raw}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.error().contains("Authorization: Bearer"), "{}", r.error());
        assert!(!r.closes(), "a 401 keeps the connection");
    }
    assert!(h.hv.vms.is_empty());
    assert!(h.hv.calls.is_empty(), "the handler was never called: {:?}", h.hv.calls);
    let lower = format!("GET /v1/vms HTTP/1.1\r\nauthorization: bearer   {TOKEN}  \r\n\r\n");
    assert_eq!(h.exchange(lower.as_bytes()).status, 200, "scheme and header name are case-insensitive");
}

#[test]
fn tokens_compare_in_constant_time_and_exactly() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
    let token = Token::new("tok").unwrap();
    assert!(token.authorizes(b"Bearer tok"));
    assert!(!token.authorizes(b"Bearer tok2"));
    assert!(!token.authorizes(b"Bearertok"));
    assert!(!token.authorizes(b"tok"));
    assert!(Token::new("").is_none());
    assert!(Token::new("has space").is_none());
    assert!(Token::new(&"x".repeat(257)).is_none());
    assert_eq!(std::format!("{token:?}"), "Token(..)", "Debug does not print the token");
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let mut h = Harness::new();
    for path in [
        "/",
        "/v1",
        "/v2/info",
        "/v1/info/",
        "/v1/vms/a/b",
        "/v1/vms//image",
        "/v1/vms/a/memslots",
        "/v1/vmsx",
    ] {
        let r = h.call("GET", path, None);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.error().contains("openapi.yaml"), "{}", r.error());
    }
    for (method, path, allow) in [
        ("POST", "/v1/info", "GET"),
        ("DELETE", "/v1/vms", "GET"),
        ("POST", "/v1/vms/a", "GET, PUT, DELETE"),
        ("GET", "/v1/vms/a/memslots/1", "PUT, DELETE"),
        ("GET", "/v1/vms/a/image", "PUT"),
        ("GET", "/v1/vms/a/actions", "POST"),
        ("PUT", "/v1/vms/a/console", "GET, POST"),
        ("PATCH", "/v1/vms/a/stats", "GET"),
        ("BREW", "/v1/vms", "GET"),
    ] {
        let r = h.call(method, path, None);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert!(r.error().contains(allow));
    }
}

#[test]
fn bad_requests_are_400_with_a_message_that_says_what_to_do() {
    let mut h = Harness::new();
    h.call("PUT", "/v1/vms/a", Some(VM));
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("PUT", "/v1/vms/b", Some("{"), "invalid JSON body"),
        ("PUT", "/v1/vms/b", Some(r#"{"vcpus": 1}"#), "memory_mib"),
        ("PUT", "/v1/vms/b", Some(r#"{"vcpus": 1, "memory_mib": 16, "gpu": true}"#), "unknown field `gpu`"),
        ("PUT", "/v1/vms/b", Some(r#"{"vcpus": -1, "memory_mib": 16}"#), "invalid JSON body"),
        ("PUT", "/v1/vms/b", Some(r#"{"vcpus": 0, "memory_mib": 16}"#), "vcpus must be"),
        ("PUT", "/v1/vms/b", Some(r#"{"vcpus": 1, "memory_mib": 99999999}"#), "memory must be"),
        ("PUT", "/v1/vms/b", Some("\u{0}\u{1}binary"), "invalid JSON body"),
        ("PUT", "/v1/vms/has.dot", Some(VM), "invalid VM id"),
        ("PUT", &format!("/v1/vms/{}", "a".repeat(65)), Some(VM), "invalid VM id"),
        ("GET", "/v1/vms/%41", None, "invalid VM id"),
        ("PUT", "/v1/vms/a/memslots/x", Some("{}"), "invalid slot number"),
        ("PUT", "/v1/vms/a/memslots/4294967296", Some("{}"), "invalid slot number"),
        (
            "PUT",
            "/v1/vms/a/memslots/1",
            Some(r#"{"guest_address": 0, "size": 4096, "address_space": 2}"#),
            "address_space",
        ),
        (
            "PUT",
            "/v1/vms/a/memslots/1",
            Some(r#"{"guest_address": 4097, "size": 4096}"#),
            "multiples of 4 KiB",
        ),
        ("POST", "/v1/vms/a/actions", Some(r#"{"action": "explode"}"#), "unknown variant `explode`"),
        ("GET", "/v1/vms/a/console?offset=abc", None, "not a number"),
        ("GET", "/v1/vms/a/console?max=0", None, "max must be"),
        ("GET", "/v1/vms/a/console?offset=1&offset=2", None, "given twice"),
        ("GET", "/v1/vms/a/console?follow=1", None, "unknown query parameter `follow`"),
        ("GET", "/v1/vms?x=%zz", None, "percent-encoding"),
        ("GET", "/v1/info", Some("{}"), "takes no body"),
        ("PUT", "/v1/vms/a/image?format=flat", Some("x"), "load="),
        ("PUT", "/v1/vms/a/image?format=pvh&load=0", Some("x"), "format=flat only"),
        ("PUT", "/v1/vms/a/image?format=zip", Some("x"), "unknown image format"),
    ];
    for (method, path, body, needle) in cases {
        let r = h.call(method, path, *body);
        assert_eq!(r.status, 400, "{method} {path} {body:?}: {}", r.error_or_body());
        assert!(r.error().contains(needle), "{method} {path}: `{}` lacks `{needle}`", r.error());
        assert!(!r.closes(), "a bad request that was framed correctly keeps the connection");
    }
    assert_eq!(h.hv.vms.len(), 1, "no failed request created anything");
    assert_eq!(h.call("GET", "/v1/vms/a", None).json()["memslots"].as_array().unwrap().len(), 1);
}

#[test]
fn unknown_vms_and_slots_are_404() {
    let mut h = Harness::new();
    h.call("PUT", "/v1/vms/a", Some(VM));
    for (method, path, body) in [
        ("GET", "/v1/vms/nope", None),
        ("DELETE", "/v1/vms/nope", None),
        ("PUT", "/v1/vms/nope/memslots/1", Some(r#"{"guest_address": 0, "size": 4096}"#)),
        ("DELETE", "/v1/vms/a/memslots/9", None),
        ("POST", "/v1/vms/nope/actions", Some(r#"{"action":"start"}"#)),
        ("GET", "/v1/vms/nope/console", None),
        ("GET", "/v1/vms/nope/stats", None),
        ("PUT", "/v1/vms/nope/image?format=elf", Some("x")),
    ] {
        let r = h.call(method, path, body);
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(r.error().contains("GET /v1/vms"), "{}", r.error());
    }
}

#[test]
fn conflicts_are_409() {
    let mut h = Harness::new();
    running_vm(&mut h, "a");
    let slot = r#"{"guest_address": 1048576, "size": 4096}"#;
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("PUT", "/v1/vms/a", Some(VM), "exists"),
        ("POST", "/v1/vms/a/actions", Some(r#"{"action":"start"}"#), "cannot start a VM that is running"),
        ("PUT", "/v1/vms/a/memslots/7", Some(slot), "overlaps slot 0"),
        (
            "PUT",
            "/v1/vms/a/memslots/0",
            Some(r#"{"guest_address": 4294967296, "size": 4096}"#),
            "delete it first",
        ),
        (
            "PUT",
            "/v1/vms/a/image?format=flat&load=0",
            Some("xx"),
            "cannot load an image into a VM that is running",
        ),
    ];
    for (method, path, body, needle) in cases {
        let r = h.call(method, path, *body);
        assert_eq!(r.status, 409, "{method} {path}: {}", r.error_or_body());
        assert!(r.error().contains(needle), "`{}` lacks `{needle}`", r.error());
    }
    h.call("PUT", "/v1/vms/b", Some(VM));
    let r = h.call("POST", "/v1/vms/b/actions", Some(r#"{"action":"start"}"#));
    assert_eq!(r.status, 409);
    assert!(r.error().contains("PUT /v1/vms/{id}/image"), "{}", r.error());
}

#[test]
fn sizes_beyond_the_limits_are_411_and_413() {
    let mut h = Harness::new();
    h.call("PUT", "/v1/vms/a", Some(r#"{"vcpus":1,"memory_mib":1}"#));
    let r = h.exchange(b"PUT /v1/vms/b HTTP/1.1\r\nAuthorization: Bearer s3cret-token_0123\r\n\r\n");
    assert_eq!(r.status, 411);
    let big = std::vec![b' '; 64 * 1024 + 1];
    let r = h.exchange(&request("PUT", "/v1/vms/b", Some(&big)));
    assert_eq!(r.status, 413);
    assert!(!r.closes(), "a body of 64 KiB is discarded and the connection kept");
    let r =
        h.exchange(&request("PUT", "/v1/vms/a/image?format=flat&load=0", Some(&std::vec![0; (1 << 20) + 1])));
    assert_eq!(r.status, 413, "larger than the VM's 1 MiB: {}", r.error_or_body());
    assert!(r.error().contains("larger than the VM's memory"));
    assert!(r.closes(), "more than 1 MiB of body is not worth discarding");
    h.reconnect();
    let raw = format!(
        "PUT /v1/vms/a/image?format=elf HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        (256u64 << 20) + 1
    );
    let r = h.exchange(raw.as_bytes());
    assert_eq!(r.status, 413);
    assert!(r.closes());
    assert!(h.conn.should_close());
    assert_eq!(h.hv.calls.iter().filter(|c| c.starts_with("begin_image")).count(), 1);
}

#[test]
fn bad_images_are_422_and_leave_the_vm_without_an_image() {
    let mut h = Harness::new();
    h.call("PUT", "/v1/vms/a", Some(VM));
    for (query, body) in [
        ("format=elf", &b"\x7fELF garbage that is not an ELF"[..]),
        ("format=pvh", &[0u8; 100][..]),
        ("format=multiboot", &b"MZ"[..]),
        ("format=flat&load=0x7c00&entry=0x9000", &[0xF4; 16][..]),
        ("format=flat&load=0", &[][..]),
    ] {
        let r = h.exchange(&request("PUT", &format!("/v1/vms/a/image?{query}"), Some(body)));
        assert_eq!(r.status, 422, "{query}: {}", r.error_or_body());
        assert!(r.error().starts_with("bad image: "), "{}", r.error());
    }
    let vm = h.call("GET", "/v1/vms/a", None).json();
    assert_eq!((vm["image_loaded"].as_bool(), vm["state"].as_str()), (Some(false), Some("created")));
}

#[test]
fn running_out_of_memory_is_503() {
    let mut h = Harness::new();
    assert_eq!(h.call("PUT", "/v1/vms/a", Some(r#"{"vcpus":1,"memory_mib":1000}"#)).status, 201);
    let r = h.call("PUT", "/v1/vms/b", Some(r#"{"vcpus":1,"memory_mib":100}"#));
    assert_eq!(r.status, 503);
    assert!(r.error().contains("delete a VM"), "{}", r.error());
    assert!(!h.hv.vms.contains_key(&crate::api::model::VmId::parse("b").unwrap()), "nothing half-created");
}

#[test]
fn every_error_maps_to_its_status_and_internal_errors_are_500() {
    use crate::loader::LoadError;
    use crate::memslot::{SlotError, SlotId};
    use crate::vm::VmError;
    let cases: Vec<(ApiError, u16)> = std::vec![
        (VmError::InvalidConfig("x".into()).into(), 400),
        (VmError::Backend(crate::vm::BackendError::OutOfMemory { backend: "SVM" }).into(), 503),
        (VmError::Memory("x".into()).into(), 503),
        (VmError::BadImage("x".into()).into(), 422),
        (VmError::WrongState { action: "start", state: "running" }.into(), 409),
        (LoadError::EmptyImage.into(), 422),
        (SlotError::Overlap { with: SlotId(1) }.into(), 409),
        (SlotError::UnknownSlot.into(), 404),
        (SlotError::OutOfMemory.into(), 503),
        (SlotError::Misaligned.into(), 400),
        (ApiError::Internal("bug".into()), 500),
        (ApiError::RequestTimeout, 408),
        (ApiError::ExpectationFailed, 417),
        (ApiError::HeadersTooLarge("x".into()), 431),
    ];
    for (e, status) in cases {
        let r = Response::error(&e);
        assert_eq!(r.status, status, "{e:?}");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"].as_str().unwrap(), format!("{e}"));
        let mut out = Vec::new();
        r.render(false, &mut out);
        assert!(out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
    }
    assert!(format!("{}", ApiError::Internal("x".into())).contains("bug in Taproot"));
}

#[test]
fn json_error_messages_escape_what_the_client_sent() {
    let mut h = Harness::new();
    let r = h.call("GET", "/v1/vms/a%22b", None);
    assert_eq!(r.status, 400);
    let r = h.call("GET", "/v1/\"quoted\"", None);
    assert_eq!(r.status, 404);
    assert!(r.error().contains("\"quoted\""));
}

impl super::Resp {
    /// The error message, or the body as text: for assertion messages.
    pub fn error_or_body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[test]
fn stats_are_the_handlers_vm_stats_serialized() {
    let mut h = Harness::new();
    running_vm(&mut h, "s");
    let r = h.call("GET", "/v1/vms/s/stats", None);
    let expected = serde_json::to_string(&VmStats::default()).unwrap();
    assert_eq!(String::from_utf8(r.body).unwrap(), expected);
}
