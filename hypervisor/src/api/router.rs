//! Routing: the table of paths and methods ([`ROUTES`], which the OpenAPI test compares
//! with `docs/api/openapi.yaml`), and [`route`], which turns a method and request target
//! into a [`Route`] with validated parameters, or the 400/404/405 that says why not.

use super::Limits;
use super::error::ApiError;
use super::model::{ImageRequest, UploadRequest, VmId};
use crate::loader::ImageFormat;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    #[must_use]
    pub fn parse(method: &str) -> Option<Self> {
        match method {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            "POST" => Some(Method::Post),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One path of the API and the methods it has.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    /// The path, with `{id}` and `{slot}` for parameters (as in the OpenAPI document).
    pub template: &'static str,
    pub methods: &'static [Method],
    /// `methods` as the `Allow` header lists them.
    pub allow: &'static str,
}

/// Every path the API has.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec { template: "/v1/info", methods: &[Method::Get], allow: "GET" },
    RouteSpec { template: "/v1/vms", methods: &[Method::Get], allow: "GET" },
    RouteSpec {
        template: "/v1/vms/{id}",
        methods: &[Method::Get, Method::Put, Method::Delete],
        allow: "GET, PUT, DELETE",
    },
    RouteSpec {
        template: "/v1/vms/{id}/memslots/{slot}",
        methods: &[Method::Put, Method::Delete],
        allow: "PUT, DELETE",
    },
    RouteSpec { template: "/v1/vms/{id}/image", methods: &[Method::Put], allow: "PUT" },
    RouteSpec { template: "/v1/vms/{id}/initrd", methods: &[Method::Put], allow: "PUT" },
    RouteSpec { template: "/v1/vms/{id}/actions", methods: &[Method::Post], allow: "POST" },
    RouteSpec { template: "/v1/vms/{id}/console", methods: &[Method::Get, Method::Post], allow: "GET, POST" },
    RouteSpec { template: "/v1/vms/{id}/stats", methods: &[Method::Get], allow: "GET" },
];

/// A request the router understood, with its parameters validated. The variant is the
/// kind of body the request takes: the connection reads that body, and the dispatcher is
/// handed each route only with its own kind of body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// No body (a non-empty one is a 400).
    Bodiless(BodilessRoute),
    /// A JSON document of at most [`Limits::max_json_body`] bytes.
    Json(JsonRoute),
    /// `PUT /v1/vms/{id}/image` and `PUT /v1/vms/{id}/initrd`: raw bytes, streamed to
    /// the handler.
    Image(VmId, UploadRequest),
    /// Raw bytes (`application/octet-stream`), small enough to be read whole.
    Bytes(BytesRoute),
}

/// A route whose request has no body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodilessRoute {
    Info,
    ListVms,
    GetVm(VmId),
    DeleteVm(VmId),
    DeleteMemslot(VmId, u32),
    Console(ConsoleQuery),
    Stats(VmId),
}

/// A route whose request body is a JSON document; each variant names the body's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonRoute {
    /// Body: [`VmCreate`](super::model::VmCreate).
    CreateVm(VmId),
    /// Body: [`MemslotSpec`](super::model::MemslotSpec).
    PutMemslot(VmId, u32),
    /// Body: [`ActionRequest`](super::model::ActionRequest).
    Action(VmId),
}

/// A route whose request body is raw bytes, read whole before the handler sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BytesRoute {
    /// `POST /v1/vms/{id}/console`: at most [`Limits::max_console_input`] bytes.
    ConsoleInput(VmId),
}

/// `GET /v1/vms/{id}/console?offset=N&max=M&wait_ms=W`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleQuery {
    pub id: VmId,
    /// Absolute console offset to read from (default 0).
    pub offset: u64,
    /// Most bytes to return, 1 to [`Limits::max_console_bytes`] (the default).
    pub max: usize,
    /// When there is nothing to read yet, wait up to this long for output (default 0; at
    /// most [`Limits::max_wait_ms`]).
    pub wait_ms: u64,
}

/// Routes `method` and `target` (the request target, origin form: path and query).
pub fn route(method: &str, target: &str, limits: &Limits) -> Result<Route, ApiError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some((spec, params)) = match_path(path) else {
        return Err(ApiError::NotFound(format!(
            "no such path: {}; the API's paths are listed in docs/api/openapi.yaml",
            printable(path)
        )));
    };
    let Some(method) = Method::parse(method).filter(|m| spec.methods.contains(m)) else {
        return Err(ApiError::MethodNotAllowed { method: printable(method), allow: spec.allow });
    };
    let mut query = Query::parse(query.unwrap_or(""))?;
    let id = params.id.map(VmId::parse).transpose()?;
    let route = match (spec.template, method, id) {
        ("/v1/info", Method::Get, None) => Route::Bodiless(BodilessRoute::Info),
        ("/v1/vms", Method::Get, None) => Route::Bodiless(BodilessRoute::ListVms),
        ("/v1/vms/{id}", Method::Get, Some(id)) => Route::Bodiless(BodilessRoute::GetVm(id)),
        ("/v1/vms/{id}", Method::Put, Some(id)) => Route::Json(JsonRoute::CreateVm(id)),
        ("/v1/vms/{id}", Method::Delete, Some(id)) => Route::Bodiless(BodilessRoute::DeleteVm(id)),
        ("/v1/vms/{id}/memslots/{slot}", method, Some(id)) => {
            let slot = parse_slot(params.slot.unwrap_or(""))?;
            if method == Method::Put {
                Route::Json(JsonRoute::PutMemslot(id, slot))
            } else {
                Route::Bodiless(BodilessRoute::DeleteMemslot(id, slot))
            }
        }
        ("/v1/vms/{id}/image", Method::Put, Some(id)) => {
            Route::Image(id, UploadRequest::Image(image_request(&mut query)?))
        }
        ("/v1/vms/{id}/initrd", Method::Put, Some(id)) => Route::Image(id, UploadRequest::Initrd),
        ("/v1/vms/{id}/actions", Method::Post, Some(id)) => Route::Json(JsonRoute::Action(id)),
        ("/v1/vms/{id}/console", Method::Get, Some(id)) => {
            let offset = query.number("offset")?.unwrap_or(0);
            let most = limits.max_console_bytes;
            let max = match query.number("max")? {
                None => most,
                Some(n) => usize::try_from(n).ok().filter(|n| (1..=most).contains(n)).ok_or_else(|| {
                    ApiError::BadRequest(format!("max must be from 1 to {most} (bytes), not {n}"))
                })?,
            };
            let wait_ms = query.number("wait_ms")?.unwrap_or(0);
            if wait_ms > limits.max_wait_ms {
                return Err(ApiError::BadRequest(format!(
                    "wait_ms must be from 0 to {}, not {wait_ms}",
                    limits.max_wait_ms
                )));
            }
            Route::Bodiless(BodilessRoute::Console(ConsoleQuery { id, offset, max, wait_ms }))
        }
        ("/v1/vms/{id}/console", Method::Post, Some(id)) => Route::Bytes(BytesRoute::ConsoleInput(id)),
        ("/v1/vms/{id}/stats", Method::Get, Some(id)) => Route::Bodiless(BodilessRoute::Stats(id)),
        _ => return Err(ApiError::Internal(format!("route table and router disagree on {}", spec.template))),
    };
    query.finish(spec.template)?;
    Ok(route)
}

/// The parameters a path matched.
#[derive(Default)]
struct PathParams<'a> {
    id: Option<&'a str>,
    slot: Option<&'a str>,
}

fn match_path(path: &str) -> Option<(&'static RouteSpec, PathParams<'_>)> {
    'routes: for spec in ROUTES {
        let mut params = PathParams::default();
        let mut got = path.split('/');
        for want in spec.template.split('/') {
            let segment = got.next()?;
            match want {
                "{id}" if !segment.is_empty() => params.id = Some(segment),
                "{slot}" if !segment.is_empty() => params.slot = Some(segment),
                literal if literal == segment => {}
                _ => continue 'routes,
            }
        }
        if got.next().is_none() {
            return Some((spec, params));
        }
    }
    None
}

fn parse_slot(slot: &str) -> Result<u32, ApiError> {
    let valid = !slot.is_empty() && slot.len() <= 10 && slot.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| slot.parse::<u32>().ok()).flatten().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid slot number {}: use a decimal from 0 to {}",
            printable(slot),
            u32::MAX
        ))
    })
}

fn image_request(query: &mut Query) -> Result<ImageRequest, ApiError> {
    let format = query.take("format")?.unwrap_or_else(|| String::from("elf"));
    let load = query.number("load")?;
    let entry = query.number("entry")?;
    let cmdline = query.take("cmdline")?.unwrap_or_default();
    if cmdline.len() > crate::loader::CMDLINE_MAX_LEN {
        return Err(ApiError::BadRequest(format!(
            "cmdline is {} bytes; at most {} after percent-decoding",
            cmdline.len(),
            crate::loader::CMDLINE_MAX_LEN
        )));
    }
    let format = match format.as_str() {
        "flat" => {
            let Some(load_gpa) = load else {
                return Err(ApiError::BadRequest(
                    "format=flat needs load=<guest address> (and optionally entry=<guest address>)".into(),
                ));
            };
            ImageFormat::Flat {
                load_gpa: crate::addr::Gpa::new(load_gpa),
                entry_gpa: entry.map(crate::addr::Gpa::new),
            }
        }
        other => match ImageFormat::by_name(other) {
            Some(_) if load.is_some() || entry.is_some() => {
                return Err(ApiError::BadRequest(
                    "load and entry apply to format=flat only; an ELF or bzImage names its own addresses"
                        .into(),
                ));
            }
            Some(elf) => elf,
            None => {
                return Err(ApiError::BadRequest(format!(
                    "unknown image format {}: use format=flat, pvh, multiboot, elf or bzimage",
                    printable(other)
                )));
            }
        },
    };
    Ok(ImageRequest { format, cmdline })
}

/// A query string's `key=value` pairs, percent-decoded; each key at most once.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {} is given twice; give it once",
                    printable(&key)
                )));
            }
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    fn take(&mut self, key: &str) -> Result<Option<String>, ApiError> {
        Ok(self.pairs.iter().position(|(k, _)| k == key).map(|i| self.pairs.swap_remove(i).1))
    }

    /// A number, decimal or `0x` hexadecimal.
    fn number(&mut self, key: &str) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.take(key)? else { return Ok(None) };
        let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
            Some(hex) if !hex.is_empty() && hex.len() <= 16 => u64::from_str_radix(hex, 16).ok(),
            Some(_) => None,
            None if !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()) => {
                value.parse().ok()
            }
            None => None,
        };
        parsed.map(Some).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "query parameter {key}={} is not a number: use decimal or 0x hexadecimal below 2^64",
                printable(&value)
            ))
        })
    }

    /// 400 for parameters the route does not take (a typo would otherwise go unnoticed).
    fn finish(self, template: &str) -> Result<(), ApiError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(ApiError::BadRequest(format!(
                "unknown query parameter {} for {template}; see docs/api/openapi.yaml",
                printable(key)
            ))),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest("invalid percent-encoding in the query string".into());
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(|c| (c as char).to_digit(16)).ok_or_else(bad)?;
                let lo = bytes.next().and_then(|c| (c as char).to_digit(16)).ok_or_else(bad)?;
                out.push((hi * 16 + lo) as u8);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::BadRequest("the query string is not UTF-8 after decoding".into()))
}

/// `s` for an error message: quoted, cut at 64 characters, control characters escaped.
fn printable(s: &str) -> String {
    let mut out = String::from("`");
    for (i, c) in s.chars().enumerate() {
        if i == 64 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}
