//! Console long-poll: the connection waits without blocking its caller, and answers on
//! output, on its deadline, or when the VM can write no more.

use super::{Harness, request, running_vm};

#[test]
fn a_long_poll_answers_at_once_when_output_is_there() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.hv.write_console("v", b"ready\n");
    let r = h.call("GET", "/v1/vms/v/console?offset=0&wait_ms=5000", None);
    assert_eq!(r.body, b"ready\n");
    assert!(!h.conn.is_waiting());
}

#[test]
fn a_long_poll_waits_for_output_and_never_blocks() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.now = 1000;
    let raw = request("GET", "/v1/vms/v/console?offset=0&wait_ms=5000", None);
    assert_eq!(h.send(&raw), raw.len());
    assert!(h.responses().is_empty());
    assert!(h.conn.is_waiting());
    assert_eq!(h.conn.deadline_ms(), Some(6000));
    h.now = 3000;
    h.poll();
    assert!(h.responses().is_empty(), "nothing written yet");
    h.hv.write_console("v", b"late line\n");
    h.poll();
    let r = h.responses().remove(0);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"late line\n"[..]));
    assert_eq!(r.header("x-console-next-offset"), Some("10"));
    assert!(!h.conn.is_waiting());
}

#[test]
fn a_long_poll_ends_empty_at_its_deadline_and_holds_later_requests_until_then() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.hv.write_console("v", b"abc");
    let mut raw = request("GET", "/v1/vms/v/console?offset=3&wait_ms=100", None);
    raw.extend(request("GET", "/v1/info", None));
    h.send(&raw);
    assert!(h.responses().is_empty(), "the pipelined request waits its turn");
    h.now = 99;
    h.poll();
    assert!(h.responses().is_empty());
    h.now = 100;
    h.poll();
    let responses = h.responses();
    assert_eq!(responses.len(), 2);
    assert_eq!((responses[0].status, responses[0].body.len()), (200, 0));
    assert_eq!(responses[0].header("x-console-next-offset"), Some("3"));
    assert_eq!(responses[1].json()["cpus"], 2);
}

#[test]
fn the_longest_long_poll_waits_its_whole_time_and_does_not_count_as_idle() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.send(&request("GET", "/v1/vms/v/console?wait_ms=60000", None));
    assert_eq!(h.conn.deadline_ms(), Some(60_000), "wait_ms is at most 60 s");
    h.now = 59_999;
    h.poll();
    assert!(h.conn.is_waiting() && !h.conn.should_close());
    h.now = 60_000;
    h.poll();
    assert_eq!(h.responses().remove(0).status, 200);
    assert!(!h.conn.should_close());
}

#[test]
fn a_long_poll_on_a_finished_vm_answers_at_once() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.hv.guest_exits("v", 0);
    let r = h.call("GET", "/v1/vms/v/console?offset=0&wait_ms=5000", None);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("x-vm-state"), Some("exited"));
}

#[test]
fn a_long_poll_on_a_vm_deleted_meanwhile_is_404() {
    let mut h = Harness::new();
    running_vm(&mut h, "v");
    h.send(&request("GET", "/v1/vms/v/console?wait_ms=5000", None));
    h.hv.vms.clear();
    h.poll();
    assert_eq!(h.responses().remove(0).status, 404);
}
