//! `docs/api/openapi.yaml` is the contract: it lists exactly the router's paths and
//! methods, every operation documents its errors, the documented actions and states are
//! the lifecycle's, and the documented limits match the code's.

use crate::api::Limits;
use crate::api::model::VmStatus;
use crate::api::router::ROUTES;
use crate::vm::{Action, VmState};
use alloc::string::String;
use alloc::vec::Vec;
use std::format;
use yaml_rust2::{Yaml, YamlLoader};

pub(super) fn document() -> Yaml {
    let path = format!("{}/../docs/api/openapi.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn methods_of(item: &Yaml) -> Vec<String> {
    let mut methods: Vec<String> = item
        .as_hash()
        .expect("a path item is a mapping")
        .keys()
        .filter_map(Yaml::as_str)
        .filter(|k| ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(k))
        .map(str::to_ascii_uppercase)
        .collect();
    methods.sort();
    methods
}

#[test]
fn the_openapi_document_has_exactly_the_routers_paths_and_methods() {
    let doc = document();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_hash().expect("paths");
    let documented: Vec<&str> = paths.keys().map(|k| k.as_str().expect("path keys are strings")).collect();
    for route in ROUTES {
        let item = &doc["paths"][route.template];
        assert!(!item.is_badvalue(), "{} is not in openapi.yaml", route.template);
        let mut methods: Vec<String> = route.methods.iter().map(|m| String::from(m.name())).collect();
        methods.sort();
        assert_eq!(methods_of(item), methods, "methods of {}", route.template);
    }
    for path in documented {
        assert!(
            ROUTES.iter().any(|r| r.template == path),
            "openapi.yaml documents {path}, which the router lacks"
        );
    }
}

#[test]
fn the_documented_actions_and_states_are_the_lifecycles_on_the_wire() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let documented = |schema: &Yaml| -> Vec<String> {
        schema["enum"].as_vec().expect("an enum").iter().filter_map(Yaml::as_str).map(String::from).collect()
    };
    let wire = |json: String| String::from(json.trim_matches('"'));
    let actions: Vec<String> =
        Action::ALL.iter().map(|a| wire(serde_json::to_string(a).expect("an action serializes"))).collect();
    assert_eq!(documented(&schemas["ActionRequest"]["properties"]["action"]), actions);
    let states = [
        VmState::Created,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Exited { status: 0 },
        VmState::Crashed { reason: String::new() },
        VmState::Stopped,
    ];
    let statuses: Vec<String> = states
        .iter()
        .map(|s| wire(serde_json::to_string(&VmStatus::of(s)).expect("a status serializes")))
        .collect();
    assert_eq!(documented(&schemas["VmState"]), statuses);
    for (state, status) in states.iter().zip(&statuses) {
        assert_eq!(state.name(), status, "a state's name is its API name");
    }
}

#[test]
fn every_operation_documents_success_auth_and_its_errors() {
    let doc = document();
    for route in ROUTES {
        for method in route.methods {
            let op = &doc["paths"][route.template][method.name().to_ascii_lowercase().as_str()];
            let responses =
                op["responses"].as_hash().unwrap_or_else(|| panic!("{} {}", method.name(), route.template));
            let codes: Vec<&str> = responses.keys().filter_map(Yaml::as_str).collect();
            assert!(
                codes.iter().any(|c| c.starts_with('2')),
                "{} {} has a success",
                method.name(),
                route.template
            );
            for needed in ["400", "401"] {
                assert!(codes.contains(&needed), "{} {} documents {needed}", method.name(), route.template);
            }
            if route.template.contains("{id}") {
                assert!(codes.contains(&"404"), "{} {} documents 404", method.name(), route.template);
            }
            assert!(
                op["operationId"].as_str().is_some(),
                "{} {} has an operationId",
                method.name(),
                route.template
            );
        }
    }
}

#[test]
fn the_documented_limits_are_the_codes() {
    let doc = document();
    let limits = &doc["x-taproot-limits"];
    let defaults = Limits::default();
    assert_eq!(limits["max_head_bytes"].as_i64(), Some(defaults.max_head_bytes as i64));
    assert_eq!(limits["max_json_body_bytes"].as_i64(), Some(defaults.max_json_body as i64));
    assert_eq!(limits["max_image_bytes"].as_i64(), Some(defaults.max_image_bytes as i64));
    assert_eq!(limits["max_console_bytes"].as_i64(), Some(defaults.max_console_bytes as i64));
    assert_eq!(limits["max_console_input_bytes"].as_i64(), Some(defaults.max_console_input as i64));
    assert_eq!(limits["max_wait_ms"].as_i64(), Some(defaults.max_wait_ms as i64));
    assert_eq!(limits["idle_timeout_ms"].as_i64(), Some(defaults.idle_timeout_ms as i64));
    assert_eq!(limits["head_timeout_ms"].as_i64(), Some(defaults.head_timeout_ms as i64));
    assert_eq!(limits["body_timeout_ms"].as_i64(), Some(defaults.body_timeout_ms as i64));
    assert_eq!(limits["min_body_bytes_per_s"].as_i64(), Some(defaults.min_body_bytes_per_s as i64));
    assert_eq!(limits["max_discarded_body_bytes"].as_i64(), Some(defaults.max_discard_bytes as i64));
    assert_eq!(limits["max_headers"].as_i64(), Some(crate::api::http::MAX_HEADERS as i64));
}

/// The schema `#/components/schemas/<name>` a `$ref` names.
fn resolve<'a>(doc: &'a Yaml, schema: &'a Yaml) -> &'a Yaml {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").expect("a local schema reference");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// `value`'s keys are exactly `schema`'s properties, all required and no others allowed,
/// and likewise for each property that is an object.
fn assert_matches_schema(doc: &Yaml, schema: &Yaml, value: &serde_json::Value, at: &str) {
    let schema = resolve(doc, schema);
    let object = value.as_object().unwrap_or_else(|| panic!("{at} is an object: {value}"));
    let properties = schema["properties"].as_hash().unwrap_or_else(|| panic!("{at} lists its properties"));
    let mut documented: Vec<&str> = properties.keys().map(|k| k.as_str().expect("property names")).collect();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    documented.sort_unstable();
    keys.sort_unstable();
    assert_eq!(keys, documented, "the keys of {at} are the schema's properties");
    assert_eq!(schema["additionalProperties"].as_bool(), Some(false), "{at} allows no other keys");
    let mut required: Vec<&str> =
        schema["required"].as_vec().map_or_else(Vec::new, |r| r.iter().filter_map(Yaml::as_str).collect());
    required.sort_unstable();
    assert_eq!(required, documented, "{at} requires every key");
    for (key, property) in properties {
        let key = key.as_str().expect("property names");
        if object[key].is_object() {
            assert_matches_schema(doc, property, &object[key], &format!("{at}.{key}"));
        } else {
            assert_eq!(resolve(doc, property)["type"].as_str(), Some("integer"), "{at}.{key} is a counter");
        }
    }
}

#[test]
fn vm_stats_have_exactly_the_keys_of_the_stats_schema() {
    let doc = document();
    let stats = serde_json::to_value(crate::vm::VmStats::default()).unwrap();
    assert_matches_schema(&doc, &doc["components"]["schemas"]["Stats"], &stats, "Stats");
    let response = &doc["paths"]["/v1/vms/{id}/stats"]["get"]["responses"]["200"];
    assert_eq!(
        response["content"]["application/json"]["schema"]["$ref"].as_str(),
        Some("#/components/schemas/Stats")
    );
}

#[test]
fn vm_limits_have_exactly_the_keys_and_bounds_of_their_schema() {
    use crate::vm::limits::{self, HostLimits};
    let doc = document();
    let schema = &doc["components"]["schemas"]["VmLimits"];
    let value = serde_json::to_value(crate::api::model::VmLimits::of(&HostLimits::default())).unwrap();
    assert_matches_schema(&doc, schema, &value, "VmLimits");
    let bounds = |key: &str| {
        (schema["properties"][key]["minimum"].as_i64(), schema["properties"][key]["maximum"].as_i64())
    };
    let range = |(min, max): (u32, u32)| (Some(i64::from(min)), Some(i64::from(max)));
    assert_eq!(bounds("max_vms"), range(limits::MAX_VMS_RANGE));
    assert_eq!(bounds("max_slots"), range(limits::MAX_SLOTS_RANGE));
    assert_eq!(bounds("max_vcpus"), range((1, crate::vm::MAX_VCPUS)));
    let (min_kib, max_kib) = limits::CONSOLE_KIB_RANGE;
    assert_eq!(bounds("console_ring_bytes"), range((min_kib * 1024, max_kib * 1024)));
}

#[test]
fn connection_counters_have_exactly_the_keys_of_their_schema() {
    let doc = document();
    let counters = serde_json::to_value(crate::api::model::ConnectionCounters::default()).unwrap();
    let schema = &doc["components"]["schemas"]["ConnectionCounters"];
    assert_matches_schema(&doc, schema, &counters, "ConnectionCounters");
    assert_eq!(
        doc["components"]["schemas"]["HypervisorInfo"]["properties"]["connections"]["$ref"].as_str(),
        Some("#/components/schemas/ConnectionCounters")
    );
}

#[test]
fn an_initrd_answer_has_exactly_the_keys_of_its_schema() {
    let doc = document();
    let placed = crate::api::model::InitrdLoaded { bytes: 5000, guest_address: Some(0x3ff_e000) };
    let value = serde_json::to_value(crate::api::model::Uploaded::Initrd(placed)).expect("serializes");
    assert_matches_schema(&doc, &doc["components"]["schemas"]["InitrdLoaded"], &value, "InitrdLoaded");
    let response = &doc["paths"]["/v1/vms/{id}/initrd"]["put"]["responses"]["200"];
    assert_eq!(
        response["content"]["application/json"]["schema"]["$ref"].as_str(),
        Some("#/components/schemas/InitrdLoaded")
    );
}
