//! One client connection: bytes in, requests handled, bytes out. It never blocks and never
//! reads a clock: the caller (the image's network loop over a smoltcp TCP socket, or a
//! test) passes the time with every call.
//!
//! The connection frames: it reads a request head, routes it, reads the body the route
//! takes (none, a JSON document or raw bytes read whole, or an image streamed to the
//! handler), hands the request to `dispatch`, and writes the response it gets back. What
//! a request does is `dispatch`'s business.
//!
//! The caller's loop, per connection:
//! 1. `receive` what the socket has (it returns how many bytes it took; leave the rest in
//!    the socket: that is the back-pressure);
//! 2. send [`Connection::output`] and report what went out with
//!    [`Connection::consume_output`] (sending counts as activity, like receiving);
//! 3. call [`Connection::poll`] at the latest at [`Connection::deadline_ms`], and whenever
//!    a long-poll may have new console output (`is_waiting`); polling more often is
//!    harmless;
//! 4. close the socket once [`Connection::should_close`]; if the peer goes away first,
//!    call [`Connection::close`] (it aborts an upload in flight).
//!
//! Deadlines (the policy is [`super::admission`]'s): the first head must be complete
//! `head_timeout_ms` after the accept, every head `head_timeout_ms` after its first byte,
//! every body [`admission::body_time_ms`] after its head; between requests the connection
//! closes after `idle_timeout_ms` without traffic. A request past its deadline is answered
//! 408 and the connection closes ([`Connection::timed_out`] then tells). Trickled bytes
//! only reset the idle timer, which does not apply during a request.
//!
//! A connection is [authenticated](Connection::is_authenticated) once a request head
//! carried the right token: admission never evicts it.
//!
//! Requests are handled in order (pipelining): while one waits (long-poll) or while the
//! output backlog is large, later bytes stay in the buffer or the socket.
//!
//! Framing: `Content-Length` only. A framing error (malformed head, bad or duplicate
//! `Content-Length`, `Transfer-Encoding`, head too large, timeout) is answered and then
//! the connection closes. Other errors keep the connection: the rejected request's body
//! is read and discarded if it is at most [`Limits::max_discard_bytes`] (and the client
//! did not wait for `100 Continue`), otherwise the connection closes after the answer.

use super::ApiConfig;
use super::admission;
use super::dispatch::{self, Outcome};
use super::error::ApiError;
use super::handler::ApiHandler;
use super::http::{self, Head, Response};
use super::router::{self, BodilessRoute, BytesRoute, ConsoleQuery, JsonRoute, Route};
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::mem;

enum State<U> {
    /// Reading a request head (the buffer may hold part of one).
    Head,
    /// Collecting a body of `len` bytes, read whole.
    Body { route: WholeBody, len: usize, keep_alive: bool },
    /// Streaming an image body to the handler.
    Upload { upload: U, offset: u64, total: u64, keep_alive: bool },
    /// Skipping the body of a request already answered.
    Discard { remaining: u64, keep_alive: bool },
    /// A console long-poll waits for output or its deadline.
    Waiting { query: ConsoleQuery, deadline_ms: u64, keep_alive: bool, buf: Vec<u8> },
    /// No more input is read; the connection ends once its output is sent.
    Closed,
}

/// A route whose body is read whole into the input buffer before it is dispatched.
enum WholeBody {
    Json(JsonRoute),
    Bytes(BytesRoute),
}

pub struct Connection<H: ApiHandler> {
    config: Arc<ApiConfig>,
    state: State<H::Upload>,
    /// Received bytes not yet handled: a head, a JSON body, pipelined requests.
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already sent.
    sent: usize,
    /// Last time bytes came in or output went out.
    last_activity_ms: u64,
    /// When the first byte of the current request head was handled.
    head_started_ms: Option<u64>,
    /// Until the first head is complete: when it is due.
    first_head_due_ms: Option<u64>,
    /// When the body being read (or discarded) is due.
    body_due_ms: u64,
    /// A request head carried the right token.
    authenticated: bool,
    /// The connection closed because a deadline passed.
    timed_out: bool,
}

impl<H: ApiHandler> Connection<H> {
    /// A connection accepted at `now_ms`.
    #[must_use]
    pub fn new(config: Arc<ApiConfig>, now_ms: u64) -> Self {
        Self {
            state: State::Head,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            last_activity_ms: now_ms,
            head_started_ms: None,
            first_head_due_ms: Some(now_ms.saturating_add(config.limits.head_timeout_ms)),
            body_due_ms: u64::MAX,
            authenticated: false,
            timed_out: false,
            config,
        }
    }

    /// Takes bytes the client sent and handles every request they complete. Returns how
    /// many bytes it took: fewer than offered while a request waits or the output backlog
    /// is full (offer the rest later). A closed connection takes and drops everything.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64, handler: &mut H) -> usize {
        let mut taken = 0;
        loop {
            self.advance(now_ms, handler);
            let rest = &bytes[taken..];
            if rest.is_empty() {
                break;
            }
            if matches!(self.state, State::Closed) {
                taken = bytes.len();
                break;
            }
            if self.backlog() >= self.config.limits.max_output_backlog {
                break;
            }
            let streaming = matches!(self.state, State::Upload { .. } | State::Discard { .. });
            let n = if streaming && self.input.is_empty() {
                // Body bytes go straight to the handler (or nowhere), never buffered.
                self.feed_body(rest, handler)
            } else {
                let room = self.capacity().saturating_sub(self.input.len());
                let n = room.min(rest.len());
                self.input.extend_from_slice(&rest[..n]);
                n
            };
            if n == 0 {
                break;
            }
            taken += n;
            self.last_activity_ms = now_ms;
        }
        taken
    }

    /// Advances what waits on time: a long-poll (new console output, or its deadline),
    /// requests held back by a full output backlog, and the idle and head timeouts.
    /// Never blocks.
    pub fn poll(&mut self, now_ms: u64, handler: &mut H) {
        self.advance(now_ms, handler);
        let limits = &self.config.limits;
        let idle = now_ms.saturating_sub(self.last_activity_ms) >= limits.idle_timeout_ms;
        let head_late =
            self.head_started_ms.is_some_and(|t| now_ms.saturating_sub(t) >= limits.head_timeout_ms)
                || self.first_head_due_ms.is_some_and(|due| now_ms >= due);
        let body_late = now_ms >= self.body_due_ms;
        match self.state {
            State::Waiting { .. } => {}
            State::Closed => {
                if idle && self.backlog() > 0 {
                    // The peer does not read its answer: give up on it.
                    self.drop_output();
                    self.timed_out = true;
                }
            }
            State::Head if self.input.is_empty() => {
                if idle || head_late {
                    self.drop_output();
                    self.state = State::Closed;
                    self.timed_out = true;
                }
            }
            State::Head => {
                if idle || head_late {
                    self.time_out(handler);
                }
            }
            State::Body { .. } | State::Upload { .. } | State::Discard { .. } => {
                if idle || body_late {
                    self.time_out(handler);
                }
            }
        }
    }

    /// A request missed its deadline: answer 408 (unless an answer is still being sent)
    /// and close.
    fn time_out(&mut self, handler: &mut H) {
        self.abort_upload(handler);
        self.input.clear();
        if self.backlog() == 0 {
            self.send(&Response::error(&ApiError::RequestTimeout), true);
        } else {
            self.drop_output();
        }
        self.state = State::Closed;
        self.timed_out = true;
    }

    /// The bytes to send next (possibly empty).
    #[must_use]
    pub fn output(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// `n` bytes of [`output`](Self::output) were sent at `now_ms`.
    pub fn consume_output(&mut self, n: usize, now_ms: u64) {
        self.sent = (self.sent + n).min(self.output.len());
        if n > 0 {
            self.last_activity_ms = now_ms;
        }
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        } else if self.sent > self.output.len() / 2 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Everything is sent and no more input will be read: close the socket.
    #[must_use]
    pub fn should_close(&self) -> bool {
        matches!(self.state, State::Closed) && self.backlog() == 0
    }

    /// Between requests: no request is partly received, handled or waiting.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head) && self.input.is_empty()
    }

    /// A request head carried the right token.
    #[must_use]
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The connection closed because a request (or the first head) missed its deadline or
    /// it sat idle too long.
    #[must_use]
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Last time bytes came in or output went out.
    #[must_use]
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms
    }

    /// A console long-poll is waiting: poll again when the VM may have written output.
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
    }

    /// When `poll` must run next at the latest (a timeout or a long-poll deadline), or
    /// `None` once the connection only waits to be closed.
    #[must_use]
    pub fn deadline_ms(&self) -> Option<u64> {
        let limits = &self.config.limits;
        let idle = self.last_activity_ms.saturating_add(limits.idle_timeout_ms);
        match &self.state {
            State::Waiting { deadline_ms, .. } => Some(*deadline_ms),
            State::Closed if self.backlog() == 0 => None,
            State::Body { .. } | State::Upload { .. } | State::Discard { .. } => {
                Some(idle.min(self.body_due_ms))
            }
            _ => {
                let head =
                    self.head_started_ms.map_or(u64::MAX, |t| t.saturating_add(limits.head_timeout_ms));
                Some(idle.min(head).min(self.first_head_due_ms.unwrap_or(u64::MAX)))
            }
        }
    }

    /// The peer went away or the caller shuts the connection down: aborts an upload in
    /// flight (the handler undoes it) and drops everything pending.
    pub fn close(&mut self, handler: &mut H) {
        self.abort_upload(handler);
        self.state = State::Closed;
        self.input = Vec::new();
        self.drop_output();
    }

    fn backlog(&self) -> usize {
        self.output.len() - self.sent
    }

    fn drop_output(&mut self) {
        self.output = Vec::new();
        self.sent = 0;
    }

    /// Bytes the input buffer may hold: one head and one body read whole.
    fn capacity(&self) -> usize {
        let limits = &self.config.limits;
        limits.max_head_bytes + limits.max_json_body.max(limits.max_console_input)
    }

    fn abort_upload(&mut self, handler: &mut H) {
        if matches!(self.state, State::Upload { .. })
            && let State::Upload { upload, .. } = mem::replace(&mut self.state, State::Closed)
        {
            handler.abort_image(upload);
        }
    }

    fn send(&mut self, response: &Response, close: bool) {
        response.render(close, &mut self.output);
    }

    /// After a request: the next one, or closed.
    fn finish(&mut self, response: &Response, keep_alive: bool) {
        self.send(response, !keep_alive);
        self.state = if keep_alive { State::Head } else { State::Closed };
    }

    /// Handles buffered input until it runs out or something must wait.
    fn advance(&mut self, now_ms: u64, handler: &mut H) {
        loop {
            if self.backlog() >= self.config.limits.max_output_backlog {
                return;
            }
            match &mut self.state {
                State::Closed => return,
                State::Head => {
                    if self.input.is_empty() {
                        self.head_started_ms = None;
                        return;
                    }
                    self.head_started_ms.get_or_insert(now_ms);
                    match http::parse_head(&self.input, &self.config.limits, &self.config.token) {
                        Ok(None) => return,
                        Ok(Some((len, head))) => {
                            self.input.drain(..len);
                            self.head_started_ms = None;
                            self.first_head_due_ms = None;
                            self.start_request(head, now_ms, handler);
                        }
                        Err(e) => {
                            self.input = Vec::new();
                            self.send(&Response::error(&e), true);
                            self.state = State::Closed;
                        }
                    }
                }
                State::Body { len, .. } => {
                    if self.input.len() < *len {
                        return;
                    }
                    let State::Body { route, len, keep_alive } = mem::replace(&mut self.state, State::Head)
                    else {
                        return;
                    };
                    let body: Vec<u8> = self.input.drain(..len).collect();
                    let response = match route {
                        WholeBody::Json(route) => dispatch::json(handler, route, &body),
                        WholeBody::Bytes(route) => dispatch::bytes(handler, route, &body),
                    };
                    self.finish(&response, keep_alive);
                }
                State::Upload { .. } | State::Discard { .. } => {
                    if self.input.is_empty() {
                        return;
                    }
                    let input = mem::take(&mut self.input);
                    let n = self.feed_body(&input, handler);
                    self.input = input;
                    self.input.drain(..n);
                }
                State::Waiting { query, deadline_ms, keep_alive, buf } => {
                    let may_wait = now_ms < *deadline_ms;
                    let Some(response) = dispatch::read_console(handler, query, buf, may_wait) else {
                        return;
                    };
                    let keep_alive = *keep_alive;
                    self.state = State::Head;
                    // Waiting was not idleness: the idle clock starts with the answer.
                    self.last_activity_ms = now_ms;
                    self.finish(&response, keep_alive);
                }
            }
        }
    }

    /// A complete head: route, authorize, and start reading its body (if any).
    fn start_request(&mut self, head: Head, now_ms: u64, handler: &mut H) {
        let config = self.config.clone();
        let limits = &config.limits;
        let body_len = head.content_length.unwrap_or(0);
        self.body_due_ms = now_ms.saturating_add(admission::body_time_ms(limits, body_len));
        self.authenticated |= head.is_authorized;
        if !head.is_authorized {
            return self.reject(&ApiError::Unauthorized, &head);
        }
        let route = match router::route(&head.method, &head.target, limits) {
            Ok(route) => route,
            Err(e) => return self.reject(&e, &head),
        };
        match route {
            Route::Bodiless(_) if body_len > 0 => self.reject(
                &ApiError::BadRequest("this request takes no body; send it without one".into()),
                &head,
            ),
            Route::Bodiless(route) => self.bodiless_request(route, head.keep_alive, now_ms, handler),
            Route::Json(route) => self.read_whole(WholeBody::Json(route), limits.max_json_body, &head),
            Route::Bytes(route) => self.read_whole(WholeBody::Bytes(route), limits.max_console_input, &head),
            Route::Image(id, request) => {
                let max = limits.max_image_bytes;
                let Some(total) = head.content_length else {
                    return self.reject(
                        &ApiError::LengthRequired(
                            "send the image with a Content-Length (curl -T FILE)".into(),
                        ),
                        &head,
                    );
                };
                if total > max {
                    return self.reject(
                        &ApiError::PayloadTooLarge(format!("the image is {total} bytes; the limit is {max}")),
                        &head,
                    );
                }
                match handler.begin_image(&id, &request, total) {
                    Err(e) => self.reject(&e, &head),
                    Ok(upload) => {
                        if head.expects_continue {
                            self.output.extend_from_slice(http::CONTINUE);
                        }
                        self.state = State::Upload { upload, offset: 0, total, keep_alive: head.keep_alive };
                        if total == 0 {
                            self.feed_body(&[], handler);
                        }
                    }
                }
            }
        }
    }

    /// Starts reading the body of `route`, of at most `max` bytes, whole.
    fn read_whole(&mut self, route: WholeBody, max: usize, head: &Head) {
        let what = match route {
            WholeBody::Json(_) => "JSON body",
            WholeBody::Bytes(_) => "body",
        };
        match head.content_length {
            None => self.reject(
                &ApiError::LengthRequired(format!("this request needs a {what} with a Content-Length")),
                head,
            ),
            Some(len) if len > max as u64 => self.reject(
                &ApiError::PayloadTooLarge(format!("the {what} is {len} bytes; the limit is {max}")),
                head,
            ),
            Some(len) => {
                if head.expects_continue {
                    self.output.extend_from_slice(http::CONTINUE);
                }
                self.state = State::Body { route, len: len as usize, keep_alive: head.keep_alive };
            }
        }
    }

    /// Answers a request that failed before its body was read, and arranges for the body
    /// to be skipped (or the connection closed when that is not worth it).
    fn reject(&mut self, e: &ApiError, head: &Head) {
        let body_len = head.content_length.unwrap_or(0);
        let keep_alive = head.keep_alive
            && (body_len == 0
                || (!head.expects_continue && body_len <= self.config.limits.max_discard_bytes));
        self.send(&Response::error(e), !keep_alive);
        self.state = match (keep_alive, body_len) {
            (false, _) => State::Closed,
            (true, 0) => State::Head,
            (true, remaining) => State::Discard { remaining, keep_alive },
        };
    }

    /// Body bytes for an upload or a discard; returns how many it took.
    fn feed_body(&mut self, bytes: &[u8], handler: &mut H) -> usize {
        match &mut self.state {
            State::Discard { remaining, keep_alive } => {
                let n = (*remaining).min(bytes.len() as u64);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = if *keep_alive { State::Head } else { State::Closed };
                }
                n as usize
            }
            State::Upload { upload, offset, total, .. } => {
                let (start, total) = (*offset, *total);
                let n = (total - start).min(bytes.len() as u64);
                let result =
                    if n == 0 { Ok(()) } else { handler.image_chunk(upload, start, &bytes[..n as usize]) };
                let end = start + n;
                match result {
                    Ok(()) if end < total => *offset = end,
                    Ok(()) => {
                        let State::Upload { upload, keep_alive, .. } =
                            mem::replace(&mut self.state, State::Head)
                        else {
                            return n as usize;
                        };
                        let response = dispatch::finish_image(handler, upload);
                        self.finish(&response, keep_alive);
                    }
                    Err(e) => {
                        let State::Upload { upload, keep_alive, .. } =
                            mem::replace(&mut self.state, State::Head)
                        else {
                            return n as usize;
                        };
                        handler.abort_image(upload);
                        let remaining = total - end;
                        let keep_alive = keep_alive && remaining <= self.config.limits.max_discard_bytes;
                        self.send(&Response::error(&e), !keep_alive);
                        self.state = match (keep_alive, remaining) {
                            (false, _) => State::Closed,
                            (true, 0) => State::Head,
                            (true, remaining) => State::Discard { remaining, keep_alive },
                        };
                    }
                }
                n as usize
            }
            State::Head | State::Body { .. } | State::Waiting { .. } | State::Closed => 0,
        }
    }

    /// A request without a body: answered now, or a console long-poll that waits.
    fn bodiless_request(&mut self, route: BodilessRoute, keep_alive: bool, now_ms: u64, handler: &mut H) {
        match dispatch::bodiless(handler, route) {
            Outcome::Done(response) => self.finish(&response, keep_alive),
            Outcome::Wait { query, buf } => {
                let deadline_ms = now_ms.saturating_add(query.wait_ms);
                self.state = State::Waiting { query, deadline_ms, keep_alive, buf };
            }
        }
    }
}
