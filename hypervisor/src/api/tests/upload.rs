//! The streamed image upload: chunks reach the handler as they arrive, and every way an
//! upload can end early reaches `abort_image`.

use super::{Harness, TOKEN, request};
use crate::api::model::VmId;
use crate::api::{Connection, mock::MockHypervisor};
use alloc::string::String;
use alloc::vec::Vec;
use std::format;

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn create(h: &mut Harness, id: &str, memory_mib: u64) {
    let body = format!(r#"{{"vcpus":1,"memory_mib":{memory_mib}}}"#);
    assert_eq!(h.call("PUT", &format!("/v1/vms/{id}"), Some(&body)).status, 201);
}

fn image_head(id: &str, len: usize) -> Vec<u8> {
    format!(
        "PUT /v1/vms/{id}/image?format=flat&load=0x10000&entry=0x10000 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

fn loaded_image(h: &Harness, id: &str) -> Option<Vec<u8>> {
    h.hv.vms.get(&VmId::parse(id).unwrap()).and_then(|vm| vm.image.clone())
}

fn chunk_calls(h: &Harness) -> Vec<(u64, usize)> {
    h.hv.calls
        .iter()
        .filter_map(|c| c.strip_prefix("image_chunk "))
        .map(|c| {
            let parts: Vec<&str> = c.split(' ').collect();
            (parts[1].parse().unwrap(), parts[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn an_image_streams_to_the_handler_chunk_by_chunk() {
    let mut h = Harness::new();
    create(&mut h, "img", 4);
    let bytes = image(100_000);
    h.send(&image_head("img", bytes.len()));
    for piece in bytes.chunks(997) {
        assert_eq!(h.send(piece), piece.len());
        let calls = chunk_calls(&h);
        let (offset, len) = *calls.last().unwrap();
        assert_eq!(len, piece.len(), "each piece goes to the handler as it arrives, unbuffered");
        assert_eq!(offset as usize + len, calls.iter().map(|c| c.1).sum::<usize>(), "offsets are contiguous");
    }
    let r = h.responses().remove(0);
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!(r.json()["bytes"], 100_000);
    assert_eq!(r.json()["entry"], 0x10000);
    assert_eq!(loaded_image(&h, "img").unwrap(), bytes);
    assert_eq!(h.hv.calls.iter().filter(|c| c.starts_with("finish_image")).count(), 1);
}

#[test]
fn a_chunk_error_aborts_the_upload_and_skips_the_rest_of_a_small_body() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    h.hv.fail_chunk_at = Some(50_000);
    let bytes = image(100_000);
    let mut raw = image_head("a", bytes.len());
    raw.extend_from_slice(&bytes);
    raw.extend(request("GET", "/v1/vms/a", None));
    for piece in raw.chunks(4096) {
        h.send(piece);
    }
    let responses = h.responses();
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].status, 503);
    assert!(responses[0].error().contains("retry"), "{}", responses[0].error());
    assert!(!responses[0].closes(), "the remaining 50 KB are skipped, the connection kept");
    assert_eq!(responses[1].json()["image_loaded"], false);
    assert_eq!(h.hv.calls.iter().filter(|c| c.starts_with("abort_image a")).count(), 1, "{:?}", h.hv.calls);
    assert!(!h.hv.calls.iter().any(|c| c.starts_with("finish_image")));

    h.hv.fail_chunk_at = None;
    let mut raw = image_head("a", 1000);
    raw.extend_from_slice(&image(1000));
    assert_eq!(h.exchange(&raw).status, 200, "the VM takes a new upload after the abort");
}

#[test]
fn a_chunk_error_early_in_a_large_body_closes_the_connection() {
    let mut h = Harness::new();
    create(&mut h, "a", 16);
    h.hv.fail_chunk_at = Some(1000);
    let bytes = image(3 << 20);
    let mut raw = image_head("a", bytes.len());
    raw.extend_from_slice(&bytes);
    h.send(&raw[..raw.len() - (2 << 20)]);
    let r = h.responses().remove(0);
    assert_eq!(r.status, 503);
    assert!(r.closes() && h.conn.should_close(), "2 MiB left is not worth reading");
    assert_eq!(h.hv.calls.iter().filter(|c| c.starts_with("abort_image")).count(), 1);
}

#[test]
fn a_client_that_goes_away_mid_upload_aborts_it() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    h.send(&image_head("a", 10_000));
    h.send(&image(4000));
    h.conn.close(&mut h.hv);
    assert!(h.hv.calls.iter().any(|c| c == "abort_image a"));
    assert!(h.conn.should_close());
    h.reconnect();
    let mut raw = image_head("a", 10_000);
    raw.extend_from_slice(&image(10_000));
    assert_eq!(h.exchange(&raw).status, 200);
}

/// An image upload streams over guest memory: once it starts, the VM's earlier image is
/// gone, so a cut-off or refused upload leaves the VM without one (`vm::staging`).
#[test]
fn a_cut_off_or_bad_upload_leaves_the_vm_without_an_image() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    let mut raw = image_head("a", 10_000);
    raw.extend_from_slice(&image(10_000));
    assert_eq!(h.exchange(&raw).status, 200);
    assert!(loaded_image(&h, "a").is_some());
    h.send(&image_head("a", 10_000));
    h.send(&image(4000));
    h.conn.close(&mut h.hv);
    assert_eq!(loaded_image(&h, "a"), None, "a cut-off upload leaves no image");
    h.reconnect();
    assert_eq!(h.exchange(&raw).status, 200);
    let bad = format!(
        "PUT /v1/vms/a/image?format=pvh HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    );
    let mut bad = bad.into_bytes();
    bad.extend_from_slice(&[0; 100]);
    assert_eq!(h.exchange(&bad).status, 422);
    assert_eq!(loaded_image(&h, "a"), None, "a bad image leaves no image");
    let info = h.call("GET", "/v1/vms/a", None);
    assert_eq!(info.json()["image_loaded"], false);
}

#[test]
fn a_stalled_upload_times_out_and_is_aborted() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    h.send(&image_head("a", 10_000));
    h.send(&image(100));
    h.now = 60_000;
    h.poll();
    let r = h.responses().remove(0);
    assert_eq!(r.status, 408);
    assert!(h.conn.should_close());
    assert!(h.hv.calls.iter().any(|c| c == "abort_image a"));
}

#[test]
fn two_uploads_to_one_vm_conflict_and_to_two_vms_proceed() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    create(&mut h, "b", 4);
    let mut second: Connection<MockHypervisor> = Connection::new(h.config.clone(), 0);
    let mut third: Connection<MockHypervisor> = Connection::new(h.config.clone(), 0);
    h.send(&image_head("a", 2000));
    h.send(&image(1000));
    second.receive(&image_head("a", 2000), 0, &mut h.hv);
    let (responses, _) = super::parse_responses(second.output());
    assert_eq!(responses[0].status, 409);
    let mut raw = image_head("b", 2000);
    raw.extend_from_slice(&image(2000));
    third.receive(&raw, 0, &mut h.hv);
    let (responses, _) = super::parse_responses(third.output());
    assert_eq!(responses[0].status, 200);
    h.send(&image(1000));
    assert_eq!(h.responses().remove(0).status, 200);
    assert!(loaded_image(&h, "a").is_some() && loaded_image(&h, "b").is_some());
}

#[test]
fn an_upload_in_flight_blocks_actions_and_delete() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    h.send(&image_head("a", 2000));
    let mut other: Connection<MockHypervisor> = Connection::new(h.config.clone(), 0);
    let mut raw = request("DELETE", "/v1/vms/a", None);
    raw.extend(request("POST", "/v1/vms/a/actions", Some(br#"{"action":"start"}"#)));
    other.receive(&raw, 0, &mut h.hv);
    let (responses, _) = super::parse_responses(other.output());
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [409, 409]);
}

#[test]
fn an_empty_image_is_422() {
    let mut h = Harness::new();
    create(&mut h, "a", 4);
    let r = h.exchange(&image_head("a", 0));
    assert_eq!(r.status, 422, "{}", r.error_or_body());
    assert!(h.hv.calls.iter().any(|c| c == "finish_image a"));
    assert!(!chunk_calls(&h).iter().any(|c| c.1 == 0), "no empty chunk is handed out");
    let _: String = r.error();
}

/// `PUT /v1/vms/{id}/initrd`: kept before the image and placed by it, placed at once after
/// it, replaced before start, refused after start, and refused with a reason when the image
/// takes none or has no room for it.
#[test]
fn the_initrd_is_placed_by_the_image_in_either_order_and_frozen_at_start() {
    const MIB: u64 = 1 << 20;
    let mut h = Harness::new();
    create(&mut h, "lx", 64);
    let initrd = image(5000);
    let r = h.exchange(&request("PUT", "/v1/vms/lx/initrd", Some(&initrd)));
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!((r.json()["bytes"].as_u64(), r.json()["guest_address"].is_null()), (Some(5000), true));

    // The kernel wants 16 MiB + 4 MiB of init_size; the initrd goes to the top of 64 MiB.
    let kernel = crate::loader::tests_bzimage::bz().build();
    let r = h.exchange(&request("PUT", "/v1/vms/lx/image?format=bzimage&cmdline=quiet", Some(&kernel)));
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!(r.json()["protocol"], "linux");
    assert_eq!(r.json()["entry"].as_u64(), Some(16 * MIB + 0x200));
    assert_eq!(r.json()["initrd_address"].as_u64(), Some(64 * MIB - 0x2000));

    let r = h.exchange(&request("PUT", "/v1/vms/lx/initrd", Some(&image(3 << 20))));
    assert_eq!(r.status, 200, "{}", r.error_or_body());
    assert_eq!(r.json()["guest_address"].as_u64(), Some(61 * MIB));

    let too_big = image(45 << 20);
    let r = h.exchange(&request("PUT", "/v1/vms/lx/initrd", Some(&too_big)));
    assert_eq!(r.status, 422, "{}", r.error_or_body());
    assert!(r.error().contains("does not fit"), "{}", r.error());
    let r = h.exchange(&request("PUT", "/v1/vms/lx/initrd", Some(&[])));
    assert_eq!(r.status, 422, "{}", r.error_or_body());

    assert_eq!(h.call("POST", "/v1/vms/lx/actions", Some(r#"{"action":"start"}"#)).status, 200);
    let r = h.exchange(&request("PUT", "/v1/vms/lx/initrd", Some(&initrd)));
    assert_eq!(r.status, 409, "{}", r.error_or_body());

    // A flat image takes no initrd, in either order.
    create(&mut h, "flat", 4);
    h.send(&image_head("flat", 16));
    assert_eq!(h.send(&image(16)), 16);
    assert_eq!(h.responses().remove(0).status, 200);
    let r = h.exchange(&request("PUT", "/v1/vms/flat/initrd", Some(&initrd)));
    assert_eq!(r.status, 422, "{}", r.error_or_body());
    assert!(r.error().contains("bzimage or pvh"), "{}", r.error());
}
