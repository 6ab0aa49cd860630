//! The API's errors. Each variant is one HTTP status; its `Display` is the message the user
//! reads in `{"error": "..."}`, so it says what went wrong and what to do about it.
//! 4xx are the client's mistakes, 5xx ours: 503 for a resource we ran out of, 500 only for
//! a bug.

use crate::loader::LoadError;
use crate::memslot::SlotError;
use crate::vm::VmError;
use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request is malformed (framing, JSON, parameters, invalid values).
    BadRequest(String),
    /// 401: no `Authorization: Bearer <token>` header, or the wrong token.
    Unauthorized,
    /// 404: no such VM, slot or path.
    NotFound(String),
    /// 405: the path exists but not with this method; `allow` lists the methods it has.
    MethodNotAllowed { method: String, allow: &'static str },
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 409: the request conflicts with the current state (start twice, slot overlap, an
    /// image into a running VM, an id that exists).
    Conflict(String),
    /// 411: a body without `Content-Length` (chunked transfer encoding included).
    LengthRequired(String),
    /// 413: the body is larger than the route accepts.
    PayloadTooLarge(String),
    /// 417: an `Expect` header other than `100-continue`.
    ExpectationFailed,
    /// 422: the image was received but cannot be loaded (the loader's verdict).
    BadImage(String),
    /// 431: the request head is too large or has too many header fields.
    HeadersTooLarge(String),
    /// 500: a bug of ours.
    Internal(String),
    /// 503: out of memory or another resource; retry after freeing some.
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout => 408,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired(_) => 411,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::ExpectationFailed => 417,
            ApiError::BadImage(_) => 422,
            ApiError::HeadersTooLarge(_) => 431,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// 404 for a VM id nobody created.
    #[must_use]
    pub fn unknown_vm(id: &str) -> Self {
        ApiError::NotFound(format!("no VM with id `{id}`; GET /v1/vms lists the VMs that exist"))
    }

    /// 404 for a slot the VM does not have.
    #[must_use]
    pub fn unknown_slot(id: &str, slot: u32) -> Self {
        ApiError::NotFound(format!("VM `{id}` has no memory slot {slot}; GET /v1/vms/{id} lists its slots"))
    }

    /// 409 for an action or request the VM's state forbids.
    #[must_use]
    pub fn wrong_state(action: &str, state: &str) -> Self {
        ApiError::Conflict(format!("cannot {action} a VM that is {state}"))
    }

    /// The JSON body `{"error": "<message>"}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        let message = self.to_string();
        // Serializing a struct of one string cannot fail; the fallback keeps it total.
        serde_json::to_string(&Body { error: &message })
            .unwrap_or_else(|_| String::from("{\"error\":\"internal error\"}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::LengthRequired(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::HeadersTooLarge(m)
            | ApiError::Unavailable(m) => f.write_str(m),
            ApiError::BadImage(m) => write!(f, "bad image: {m}; fix the image or its format parameters"),
            ApiError::Internal(m) => {
                write!(f, "internal error (a bug in Taproot, please report it): {m}")
            }
            ApiError::Unauthorized => f.write_str(
                "missing or wrong token: send `Authorization: Bearer <token>` with the token printed \
                 on the serial console at boot (or given with token= on the command line)",
            ),
            ApiError::MethodNotAllowed { method, allow } => {
                write!(f, "method {method} is not allowed on this path; use one of: {allow}")
            }
            ApiError::RequestTimeout => {
                f.write_str("the request did not arrive in time; send it whole, without pauses")
            }
            ApiError::ExpectationFailed => {
                f.write_str("only `Expect: 100-continue` is supported; drop the Expect header")
            }
        }
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        match &e {
            VmError::InvalidConfig(_) => ApiError::BadRequest(e.to_string()),
            // Backend failures at creation are exhausted resources (memory for control
            // structures), not bugs.
            VmError::Backend(_) => ApiError::Unavailable(format!("{e}; delete a VM and retry")),
            VmError::Memory(_) => ApiError::Unavailable(format!("{e}; delete a VM or a slot and retry")),
            VmError::BadImage(m) => ApiError::BadImage(m.clone()),
            VmError::WrongState { action, state } => ApiError::wrong_state(action, state),
            VmError::TooLarge(m) => ApiError::PayloadTooLarge(m.clone()),
            VmError::NoImage => ApiError::Conflict(format!("{e}; PUT /v1/vms/{{id}}/image first")),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        ApiError::BadImage(e.to_string())
    }
}

impl From<SlotError> for ApiError {
    fn from(e: SlotError) -> Self {
        match e {
            SlotError::ZeroSize
            | SlotError::Misaligned
            | SlotError::BeyondAddressWidth
            | SlotError::DirtyLogDisabled => ApiError::BadRequest(format!("bad memory slot: {e}")),
            SlotError::Overlap { .. } => {
                ApiError::Conflict(format!("{e}; choose another guest_address or delete that slot first"))
            }
            SlotError::DuplicateId => {
                ApiError::Conflict(format!("{e}; delete it first or choose another slot"))
            }
            SlotError::Destroyed => ApiError::Conflict(e.to_string()),
            SlotError::UnknownSlot => ApiError::NotFound(format!("{e}; GET the VM to list its slots")),
            SlotError::OutOfMemory => ApiError::Unavailable(format!("{e}; delete a VM or a slot and retry")),
        }
    }
}
