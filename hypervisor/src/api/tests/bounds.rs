//! Every bound in `docs/api/openapi.yaml` (`minimum`, `maximum`, `maxLength`, `multipleOf`)
//! is the one the server enforces: each is read from the document and sent just inside
//! (accepted) and just outside (400 with a JSON error), through a real [`Connection`] for
//! request values and through the command-line parsers for the host's limits, which
//! `/v1/info` reports. A bound added to the document without a case here fails
//! [`every_documented_bound_is_checked_at_its_edges`].

use super::openapi::document;
use super::{Harness, request};
use crate::api::mock::MockHypervisor;
use crate::vm::{commit, limits::HostLimits};
use alloc::string::String;
use alloc::vec::Vec;
use std::format;
use yaml_rust2::Yaml;

/// Where each bound of the document is, as `where.key` (a parameter is named by its `name`),
/// with its value.
fn documented_bounds(doc: &Yaml) -> Vec<(String, i64)> {
    fn walk(node: &Yaml, at: &str, out: &mut Vec<(String, i64)>) {
        match node {
            Yaml::Hash(map) => {
                for (key, value) in map {
                    let key = key.as_str().unwrap_or("?");
                    if ["minimum", "maximum", "maxLength", "minLength", "multipleOf"].contains(&key) {
                        out.push((format!("{at}.{key}"), value.as_i64().expect("an integer bound")));
                    } else {
                        walk(value, &format!("{at}/{key}"), out);
                    }
                }
            }
            Yaml::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let name = item["name"].as_str().map_or_else(|| format!("{index}"), String::from);
                    walk(item, &format!("{at}[{name}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out
}

/// The bound at `at` (as [`documented_bounds`] names it).
fn bound(doc: &Yaml, at: &str) -> i64 {
    documented_bounds(doc)
        .into_iter()
        .find(|(place, _)| place == at)
        .unwrap_or_else(|| panic!("openapi.yaml has no bound {at}"))
        .1
}

const CONSOLE: &str = "/paths//v1/vms/{id}/console/get/parameters";
const IMAGE: &str = "/paths//v1/vms/{id}/image/put/parameters";
const SCHEMAS: &str = "/components/schemas";

/// Every place this file checks.
const CHECKED: &[&str] = &[
    "/paths//v1/vms/{id}/console/get/parameters[offset]/schema.minimum",
    "/paths//v1/vms/{id}/console/get/parameters[max]/schema.minimum",
    "/paths//v1/vms/{id}/console/get/parameters[max]/schema.maximum",
    "/paths//v1/vms/{id}/console/get/parameters[wait_ms]/schema.minimum",
    "/paths//v1/vms/{id}/console/get/parameters[wait_ms]/schema.maximum",
    "/paths//v1/vms/{id}/image/put/parameters[cmdline]/schema.maxLength",
    "/components/parameters/Slot/schema.minimum",
    "/components/parameters/Slot/schema.maximum",
    "/components/schemas/VmCreate/properties/vcpus.minimum",
    "/components/schemas/VmCreate/properties/vcpus.maximum",
    "/components/schemas/VmCreate/properties/memory_mib.minimum",
    "/components/schemas/VmCreate/properties/memory_mib.maximum",
    "/components/schemas/MemslotSpec/properties/guest_address.minimum",
    "/components/schemas/MemslotSpec/properties/guest_address.multipleOf",
    "/components/schemas/MemslotSpec/properties/size.minimum",
    "/components/schemas/MemslotSpec/properties/size.multipleOf",
    "/components/schemas/HypervisorInfo/properties/overcommit_percent.minimum",
    "/components/schemas/HypervisorInfo/properties/overcommit_percent.maximum",
    "/components/schemas/VmLimits/properties/max_vms.minimum",
    "/components/schemas/VmLimits/properties/max_vms.maximum",
    "/components/schemas/VmLimits/properties/max_vcpus.minimum",
    "/components/schemas/VmLimits/properties/max_vcpus.maximum",
    "/components/schemas/VmLimits/properties/max_slots.minimum",
    "/components/schemas/VmLimits/properties/max_slots.maximum",
    "/components/schemas/VmLimits/properties/console_ring_bytes.minimum",
    "/components/schemas/VmLimits/properties/console_ring_bytes.maximum",
];

#[test]
fn every_documented_bound_is_checked_at_its_edges() {
    let doc = document();
    let mut documented: Vec<String> = documented_bounds(&doc).into_iter().map(|(at, _)| at).collect();
    let mut checked: Vec<String> = CHECKED.iter().map(|s| String::from(*s)).collect();
    documented.sort();
    checked.sort();
    assert_eq!(documented, checked, "a bound in openapi.yaml without a boundary test, or the reverse");
}

/// A harness whose mock has room for the largest VM the document allows.
fn harness() -> Harness {
    let mut h = Harness::new();
    h.hv = MockHypervisor::new(1 << 20);
    h
}

/// `status` for a value just inside; 400 with a JSON error for one just outside.
fn assert_edge(h: &mut Harness, what: &str, method: &str, path: &str, body: Option<&str>, inside: u16) {
    let r = h.call(method, path, body);
    if inside == 400 {
        assert_eq!(r.status, 400, "{what}: {method} {path} {body:?} is outside: {:?}", r.body);
        let _ = r.error();
    } else {
        assert_eq!(r.status, inside, "{what}: {method} {path} {body:?} is inside: {:?}", r.body);
    }
}

#[test]
fn console_reads_take_exactly_the_documented_offsets_sizes_and_waits() {
    let doc = document();
    let mut h = harness();
    super::running_vm(&mut h, "c");
    // Output to read, so that no read waits.
    h.hv.write_console("c", b"x");
    let read = |h: &mut Harness, query: &str, status: u16| {
        assert_edge(h, query, "GET", &format!("/v1/vms/c/console?{query}"), None, status);
    };
    let offset_min = bound(&doc, &format!("{CONSOLE}[offset]/schema.minimum"));
    read(&mut h, &format!("offset={offset_min}"), 200);
    read(&mut h, &format!("offset={}", offset_min - 1), 400);
    let (max_min, max_max) = (
        bound(&doc, &format!("{CONSOLE}[max]/schema.minimum")),
        bound(&doc, &format!("{CONSOLE}[max]/schema.maximum")),
    );
    for (max, status) in [(max_min - 1, 400), (max_min, 200), (max_max, 200), (max_max + 1, 400)] {
        read(&mut h, &format!("max={max}"), status);
    }
    let (wait_min, wait_max) = (
        bound(&doc, &format!("{CONSOLE}[wait_ms]/schema.minimum")),
        bound(&doc, &format!("{CONSOLE}[wait_ms]/schema.maximum")),
    );
    for (wait, status) in [(wait_min - 1, 400), (wait_min, 200), (wait_max, 200), (wait_max + 1, 400)] {
        read(&mut h, &format!("wait_ms={wait}"), status);
    }
}

#[test]
fn vm_creation_takes_exactly_the_documented_vcpus_and_memory() {
    let doc = document();
    let mut h = harness();
    let field = |name: &str, edge: &str| bound(&doc, &format!("{SCHEMAS}/VmCreate/properties/{name}.{edge}"));
    let mut number = 0;
    let mut create = |h: &mut Harness, vcpus: i64, memory_mib: i64, status: u16| {
        number += 1;
        let body = format!(r#"{{"vcpus": {vcpus}, "memory_mib": {memory_mib}}}"#);
        assert_edge(h, "VmCreate", "PUT", &format!("/v1/vms/vm{number}"), Some(&body), status);
    };
    let (vcpus_min, vcpus_max) = (field("vcpus", "minimum"), field("vcpus", "maximum"));
    let (mib_min, mib_max) = (field("memory_mib", "minimum"), field("memory_mib", "maximum"));
    for (vcpus, status) in [(vcpus_min - 1, 400), (vcpus_min, 201), (vcpus_max, 201), (vcpus_max + 1, 400)] {
        create(&mut h, vcpus, mib_min, status);
    }
    for (mib, status) in [(mib_min - 1, 400), (mib_min, 201), (mib_max, 201), (mib_max + 1, 400)] {
        create(&mut h, vcpus_min, mib, status);
    }
}

#[test]
fn memory_slots_take_exactly_the_documented_numbers_addresses_and_sizes() {
    let doc = document();
    let mut h = harness();
    assert_eq!(h.call("PUT", "/v1/vms/s", Some(r#"{"vcpus": 1, "memory_mib": 1}"#)).status, 201);
    let slot_min = bound(&doc, "/components/parameters/Slot/schema.minimum");
    let slot_max = bound(&doc, "/components/parameters/Slot/schema.maximum");
    let field =
        |name: &str, edge: &str| bound(&doc, &format!("{SCHEMAS}/MemslotSpec/properties/{name}.{edge}"));
    let (size_min, size_step) = (field("size", "minimum"), field("size", "multipleOf"));
    let (address_min, address_step) =
        (field("guest_address", "minimum"), field("guest_address", "multipleOf"));
    let mut next_address = 1i64 << 32;
    let mut put = |h: &mut Harness, slot: i64, address: Option<i64>, size: i64, status: u16| {
        let address = address.unwrap_or(next_address);
        next_address += 1 << 24;
        let body = format!(r#"{{"guest_address": {address}, "size": {size}}}"#);
        assert_edge(h, "MemslotSpec", "PUT", &format!("/v1/vms/s/memslots/{slot}"), Some(&body), status);
    };
    // Slot 0 is the VM's RAM: the smallest number is checked on a VM without it.
    assert_eq!(h.call("DELETE", "/v1/vms/s/memslots/0", None).status, 204);
    put(&mut h, slot_min, Some(address_min), size_min, 201);
    put(&mut h, slot_min - 1, None, size_min, 400);
    put(&mut h, slot_max, None, size_min, 201);
    put(&mut h, slot_max + 1, None, size_min, 400);
    put(&mut h, 7, None, size_min - 1, 400);
    put(&mut h, 7, None, size_min + size_step, 201);
    put(&mut h, 8, None, size_min + size_step - 1, 400);
    put(&mut h, 8, Some((3 << 32) + address_step - 1), size_min, 400);
    put(&mut h, 8, Some(address_min - 1), size_min, 400);
}

#[test]
fn load_and_entry_come_only_with_format_flat_and_cmdline_has_its_documented_length() {
    let doc = document();
    let mut h = harness();
    assert_eq!(h.call("PUT", "/v1/vms/i", Some(r#"{"vcpus": 1, "memory_mib": 1}"#)).status, 201);
    let upload = |h: &mut Harness, query: &str| {
        h.reconnect();
        h.exchange(&request("PUT", &format!("/v1/vms/i/image?{query}"), Some(&[0xF4; 16]))).status
    };
    for query in [
        "format=elf&load=0x1000",
        "format=pvh&entry=0x1000",
        "format=multiboot&load=1&entry=1",
        "format=flat",
    ] {
        assert_eq!(upload(&mut h, query), 400, "{query}");
    }
    // A cmdline of the largest length reaches the loader, which refuses these bytes as an
    // ELF (422); one byte more is refused before the body is read.
    let longest = bound(&doc, &format!("{IMAGE}[cmdline]/schema.maxLength")) as usize;
    let cmdline = "a".repeat(longest);
    assert_eq!(upload(&mut h, &format!("format=pvh&cmdline={cmdline}")), 422);
    assert_eq!(upload(&mut h, &format!("format=pvh&cmdline={cmdline}a")), 400);
    // Percent-decoding counts: `%41` is one byte.
    assert_eq!(upload(&mut h, &format!("format=pvh&cmdline={}%41", &cmdline[1..])), 422);
    assert_eq!(upload(&mut h, "format=flat&load=0x1000&entry=0x1000"), 200);
}

#[test]
fn the_host_limits_info_reports_are_accepted_on_the_command_line_exactly_within_their_documented_range() {
    let doc = document();
    let limit = |name: &str, edge: &str| bound(&doc, &format!("{SCHEMAS}/VmLimits/properties/{name}.{edge}"));
    let parse = |key: &str, value: i64| {
        let text = format!("{value}");
        HostLimits::from_values(|k| (k == key).then_some(text.as_str()))
    };
    for (name, key, unit) in [
        ("max_vms", "max_vms", 1),
        ("max_vcpus", "max_vcpus", 1),
        ("max_slots", "max_slots", 1),
        ("console_ring_bytes", "console_kib", 1024),
    ] {
        let (min, max) = (limit(name, "minimum") / unit, limit(name, "maximum") / unit);
        for (value, accepted) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
            assert_eq!(parse(key, value).is_ok(), accepted, "{key}={value}");
        }
    }
    let info =
        |edge: &str| bound(&doc, &format!("{SCHEMAS}/HypervisorInfo/properties/overcommit_percent.{edge}"));
    let ratio = |percent: i64| format!("{}.{:02}", percent / 100, percent % 100);
    for (percent, accepted) in [
        (info("minimum") - 1, false),
        (info("minimum"), true),
        (info("maximum"), true),
        (info("maximum") + 1, false),
    ] {
        let parsed = commit::parse_overcommit(&ratio(percent));
        assert_eq!(parsed.ok(), accepted.then_some(percent as u32), "overcommit={}", ratio(percent));
    }
}
