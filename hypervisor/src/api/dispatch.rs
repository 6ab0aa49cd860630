//! Dispatch: a routed request, with its body, to the [`ApiHandler`] method that acts on
//! it, and the handler's answer (or error) to a [`Response`]. It reads no bytes and keeps
//! no state; [`Connection`](super::Connection) frames the request, calls one of these
//! functions, and writes what it returns.
//!
//! Image uploads are not dispatched here: their body is streamed, chunk by chunk, by the
//! connection ([`ApiHandler::begin_image`] to [`ApiHandler::finish_image`]); only the
//! final answer is rendered here ([`finish_image`]).

use super::error::ApiError;
use super::handler::ApiHandler;
use super::http::Response;
use super::model::{ActionRequest, ConsoleRead, MemslotSpec, VmCreate, VmList};
use super::router::{BodilessRoute, BytesRoute, ConsoleQuery, JsonRoute};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// What a request without a body comes to.
pub(super) enum Outcome {
    /// The answer.
    Done(Response),
    /// A console long-poll found nothing to read yet: the connection waits, up to
    /// `query.wait_ms`, and calls [`read_console`] again with the same buffer.
    Wait { query: ConsoleQuery, buf: Vec<u8> },
}

/// A request without a body.
pub(super) fn bodiless<H: ApiHandler>(handler: &mut H, route: BodilessRoute) -> Outcome {
    let result = match route {
        BodilessRoute::Info => handler.info().map(|info| Response::json(200, &info)),
        BodilessRoute::ListVms => handler.list_vms().map(|vms| Response::json(200, &VmList { vms })),
        BodilessRoute::GetVm(id) => handler.vm(&id).map(|vm| Response::json(200, &vm)),
        BodilessRoute::DeleteVm(id) => handler.delete_vm(&id).map(|()| Response::no_content()),
        BodilessRoute::DeleteMemslot(id, slot) => {
            handler.delete_memslot(&id, slot).map(|()| Response::no_content())
        }
        BodilessRoute::Stats(id) => handler.stats(&id).map(|stats| Response::json(200, &stats)),
        BodilessRoute::Console(query) => {
            // Sized by the client (up to `max_console_bytes`): a heap that cannot give it
            // answers 503 rather than ending the image.
            let mut buf = Vec::new();
            if buf.try_reserve_exact(query.max).is_err() {
                let e = ApiError::Unavailable(format!(
                    "no memory for a {}-byte console read; ask for less",
                    query.max
                ));
                return Outcome::Done(Response::error(&e));
            }
            buf.resize(query.max, 0);
            return match read_console(handler, &query, &mut buf, query.wait_ms > 0) {
                Some(response) => Outcome::Done(response),
                None => Outcome::Wait { query, buf },
            };
        }
    };
    Outcome::Done(result.unwrap_or_else(|e| Response::error(&e)))
}

/// A request with a JSON body: parses the body as the route's type, then acts.
pub(super) fn json<H: ApiHandler>(handler: &mut H, route: JsonRoute, body: &[u8]) -> Response {
    let result = match route {
        JsonRoute::CreateVm(id) => parse_json::<VmCreate>(body, r#"{"vcpus": 1, "memory_mib": 64}"#)
            .and_then(|config| handler.create_vm(&id, &config))
            .map(|vm| Response::json(201, &vm)),
        JsonRoute::PutMemslot(id, slot) => parse_json::<MemslotSpec>(
            body,
            r#"{"guest_address": 1048576, "size": 4096, "read_only": false, "dirty_log": false, "address_space": 0}"#,
        )
        .and_then(|spec| {
            spec.as_id()?;
            handler.put_memslot(&id, slot, &spec)
        })
        .map(|slot| Response::json(201, &slot)),
        JsonRoute::Action(id) => parse_json::<ActionRequest>(body, r#"{"action": "start"}"#)
            .and_then(|request| handler.action(&id, request.action))
            .map(|vm| Response::json(200, &vm)),
    };
    result.unwrap_or_else(|e| Response::error(&e))
}

/// A request with a raw body, read whole.
pub(super) fn bytes<H: ApiHandler>(handler: &mut H, route: BytesRoute, body: &[u8]) -> Response {
    let result = match route {
        BytesRoute::ConsoleInput(id) => {
            handler.console_input(&id, body).map(|accepted| Response::json(200, &accepted))
        }
    };
    result.unwrap_or_else(|e| Response::error(&e))
}

/// The answer to a completed image upload.
pub(super) fn finish_image<H: ApiHandler>(handler: &mut H, upload: H::Upload) -> Response {
    match handler.finish_image(upload) {
        Ok(loaded) => Response::json(200, &loaded),
        Err(e) => Response::error(&e),
    }
}

/// Reads the console for `query` into `buf`. `None` when there is nothing to tell yet
/// (no bytes, none missed, the VM may still write) and `may_wait`: the client is willing
/// to wait for output.
pub(super) fn read_console<H: ApiHandler>(
    handler: &mut H,
    query: &ConsoleQuery,
    buf: &mut [u8],
    may_wait: bool,
) -> Option<Response> {
    match handler.read_console(&query.id, query.offset, buf) {
        Ok(read) if may_wait && read.len == 0 && read.missed == 0 && !read.state.is_final() => None,
        Ok(read) => Some(console_response(buf, read)),
        Err(e) => Some(Response::error(&e)),
    }
}

fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}; send for example {example}")))
}

fn console_response(buf: &[u8], read: ConsoleRead) -> Response {
    let len = read.len.min(buf.len());
    Response {
        status: 200,
        content_type: Some(Response::BYTES),
        headers: vec![
            ("X-Console-Next-Offset", format!("{}", read.next_offset)),
            ("X-Console-Missed", format!("{}", read.missed)),
            ("X-Vm-State", String::from(read.state.name())),
        ],
        body: buf[..len].to_vec(),
    }
}
