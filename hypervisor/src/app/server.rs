//! The control plane's server loop on the boot CPU: the network stack, a fixed set of TCP
//! sockets listening on the API port (each carries one [`Connection`] at a time), and the
//! VM registry. Everything is polled; the boot CPU runs no vCPU unless it is the only CPU,
//! so the API stays responsive however busy the guests are.

use super::manager::Manager;
use super::sched;
use crate::sys;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::convert::Infallible;
use hypervisor::api::{ApiConfig, Connection, Token};
use hypervisor::backend::choice::{self, WithBackend};
use hypervisor::backend::{Backend, BackendError};
use libos::cmdline;
use libos::net::smoltcp::iface::SocketHandle;
use libos::net::smoltcp::socket::tcp;
use libos::net::{Addressing, Stack};

pub const DEFAULT_API_PORT: u16 = 8080;
/// Concurrent connections (the issue asks for at least 8).
const CONNECTIONS: usize = 8;
/// Per-socket buffers: an image upload streams through the receive side.
const SOCKET_BUFFER: usize = 64 * 1024;

pub fn serve(line: &str) -> ! {
    match choice::choose().dispatch(Serve { line }) {}
}

/// The server, with the chosen backend. Without virtualization the API still answers, so
/// that a user who reaches it learns why no VM can run (`/v1/info` says backend "none",
/// creating a VM answers 503 with the reason); the manager then creates no VM, so the
/// stand-in backend type is never used.
struct Serve<'a> {
    line: &'a str,
}

impl WithBackend for Serve<'_> {
    type Output = Infallible;

    fn with<B: Backend>(self, available: Result<(), BackendError>) -> Infallible {
        serve_with::<B>(self.line, available)
    }
}

/// Why this machine cannot run VMs, if it cannot.
fn virtualization<B: Backend>(available: Result<(), BackendError>) -> Result<(), String> {
    if available.is_err() {
        return Err("this machine offers no hardware virtualization (VMX or SVM) to Taproot; run it on \
                    bare metal or on a host with nested virtualization on"
            .into());
    }
    sched::start(B::enable_on_this_cpu)
        .map_err(|e| format!("hardware virtualization could not be turned on: {e}"))
}

fn now_ms() -> u64 {
    libos::time::now_ns() / 1_000_000
}

/// The token from `token=` or, without one, 32 hex digits from RDRAND (printed once, on
/// the serial console, which only the machine's owner reads).
fn token(line: &str) -> Option<(Token, String)> {
    let text = match cmdline::value(line, "token") {
        Some(given) => String::from(given),
        None => {
            let mut bytes = [0u8; 16];
            if !sys::random(&mut bytes) {
                log::error!("api: no RDRAND to make a token; give one with token=");
                return None;
            }
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    match Token::new(&text) {
        Some(token) => Some((token, text)),
        None => {
            log::error!("api: token= must be 1 to 256 visible ASCII characters");
            None
        }
    }
}

fn serve_with<B: Backend>(line: &str, available: Result<(), BackendError>) -> ! {
    let virt = virtualization::<B>(available);
    if let Err(e) = &virt {
        log::error!("{e}; the API answers, but VMs cannot be created");
    }
    let port = cmdline::value(line, "api_port").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_API_PORT);
    let addressing = match Addressing::from_cmdline(line) {
        Ok(a) => a,
        Err(e) => {
            log::error!("net: {e}; the control plane is off");
            libos::smp::idle()
        }
    };
    let Some(mut stack) = Stack::new(addressing) else {
        log::warn!("net: no virtio-net device; the control plane is off");
        libos::smp::idle()
    };
    let Some((token, printed)) = token(line) else { libos::smp::idle() };
    let config = Arc::new(ApiConfig::new(token));
    let mut manager = Manager::<B>::new(virt);
    let mut slots: Vec<(SocketHandle, Option<Connection<Manager<B>>>)> =
        (0..CONNECTIONS).map(|_| (stack.add_tcp_socket(SOCKET_BUFFER), None)).collect();
    let mut states = [tcp::State::Closed; CONNECTIONS];
    let mut announced = false;
    loop {
        stack.poll();
        if !announced && let Some(ip) = stack.ipv4_address() {
            sys::console_write(
                format!(
                    "taproot: api listening addr={ip} port={port} token={printed}\n\
                     taproot: try: curl -H 'Authorization: Bearer {printed}' http://127.0.0.1:{port}/v1/info\n"
                )
                .as_bytes(),
            );
            announced = true;
        }
        let now = now_ms();
        for (index, (handle, connection)) in slots.iter_mut().enumerate() {
            let socket = stack.sockets.get_mut::<tcp::Socket>(*handle);
            if socket.state() != states[index] {
                log::trace!("api: socket {index}: {} -> {}", states[index], socket.state());
                states[index] = socket.state();
            }
            if !socket.is_open() {
                if let Some(mut old) = connection.take() {
                    old.close(&mut manager);
                }
                let _ = socket.listen(port);
                continue;
            }
            if !socket.is_active() {
                continue;
            }
            let conn = connection.get_or_insert_with(|| Connection::new(config.clone(), now));
            while socket.can_recv() {
                let taken = socket.recv(|data| {
                    let n = conn.receive(data, now, &mut manager);
                    (n, n)
                });
                if !matches!(taken, Ok(n) if n > 0) {
                    break;
                }
            }
            conn.poll(now, &mut manager);
            while !conn.output().is_empty() && socket.can_send() {
                match socket.send_slice(conn.output()) {
                    Ok(n) if n > 0 => conn.consume_output(n, now),
                    _ => break,
                }
            }
            // Close our side once everything is sent and either the connection is done or
            // the peer has closed its side (no more requests can come).
            let peer_closed = socket.state() == tcp::State::CloseWait;
            if conn.output().is_empty() && (conn.should_close() || peer_closed) {
                if socket.can_recv() && socket.send_queue() == 0 {
                    // The connection refused the rest of what the peer sends (a framing
                    // error, an oversized body): reset rather than leave a half-closed
                    // socket that the peer keeps feeding.
                    socket.abort();
                } else {
                    socket.close();
                }
            }
            if !socket.may_recv() && !socket.may_send() {
                conn.close(&mut manager);
                *connection = None;
            }
        }
        if libos::smp::cpu_count() == 1 {
            sched::run_one_slice();
        }
    }
}
