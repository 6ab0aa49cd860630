//! The control plane: HTTP/1.1 with JSON bodies, bearer-token authentication, and the
//! resources of `docs/api/openapi.yaml` (the contract; a test keeps [`router::ROUTES`] and
//! it in step).
//!
//! The request path, as in Firecracker's API server: parse ([`http`]), route and validate
//! ([`router`], [`model`]), act (`dispatch` calls the [`ApiHandler`]), render
//! ([`http::Response`]), with errors whose `Display` is the user's message ([`ApiError`]).
//! [`Connection`] frames requests over a byte stream (a head, then the body its
//! [`router::Route`] says it takes) and hands each to `dispatch`; it does no I/O and reads
//! no clock, so it runs the same in the image (fed by a smoltcp TCP socket) and in host
//! tests (fed by byte slices).
//!
//! Image upload (`PUT /v1/vms/{id}/image?format=...`) is streamed: the connection hands
//! body bytes to [`ApiHandler::image_chunk`] as they arrive and never buffers the body.
//! Console input (`POST /v1/vms/{id}/console`, raw bytes up to
//! [`Limits::max_console_input`]) is read whole, then fed to the guest's UART, which takes
//! what fits: the answer's `accepted` is the backpressure.

pub mod admission;
mod auth;
mod connection;
mod dispatch;
mod error;
mod handler;
pub mod http;
pub mod mock;
pub mod model;
pub mod router;

#[cfg(test)]
mod tests;

pub use auth::{TOKEN_MAX_LEN, Token, constant_time_eq};
pub use connection::Connection;
pub use error::ApiError;
pub use handler::ApiHandler;

/// Bounds on what one connection accepts and holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and header fields), in bytes.
    pub max_head_bytes: usize,
    /// Largest JSON request body.
    pub max_json_body: usize,
    /// Largest image upload (the handler also refuses images larger than the VM's memory).
    pub max_image_bytes: u64,
    /// A rejected request's body up to this size is read and dropped, keeping the
    /// connection; a larger one closes it.
    pub max_discard_bytes: u64,
    /// Most console bytes one read returns.
    pub max_console_bytes: usize,
    /// Largest console input (`POST /v1/vms/{id}/console`), read whole before it is fed.
    pub max_console_input: usize,
    /// Longest console long-poll (a larger `wait_ms` is a 400).
    pub max_wait_ms: u64,
    /// A connection with no traffic in either direction for this long is closed (a
    /// request in progress is answered with 408 first).
    pub idle_timeout_ms: u64,
    /// A request head must be complete this long after its first byte (slow-header
    /// clients). The first head of a connection must also be complete this long after the
    /// accept.
    pub head_timeout_ms: u64,
    /// A request body must be complete this long after its head, plus one second per
    /// [`min_body_bytes_per_s`](Self::min_body_bytes_per_s) of its `Content-Length`
    /// ([`admission::body_time_ms`]).
    pub body_timeout_ms: u64,
    /// The slowest upload rate a body's deadline allows for.
    pub min_body_bytes_per_s: u64,
    /// While this many response bytes wait to be sent, no further request is handled.
    pub max_output_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            max_json_body: 64 * 1024,
            max_image_bytes: 256 << 20,
            max_discard_bytes: 1 << 20,
            max_console_bytes: 64 * 1024,
            max_console_input: 64 * 1024,
            max_wait_ms: 60_000,
            idle_timeout_ms: 60_000,
            head_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            min_body_bytes_per_s: 64 * 1024,
            max_output_backlog: 128 * 1024,
        }
    }
}

/// What every connection of one API server shares.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub token: Token,
    pub limits: Limits,
}

impl ApiConfig {
    #[must_use]
    pub fn new(token: Token) -> Self {
        Self { token, limits: Limits::default() }
    }
}
