//! The control plane's server loop on the boot CPU: the network stack, a fixed set of TCP
//! sockets listening on the API port (each carries one [`Connection`] at a time), and the
//! VM registry. Everything is polled; the boot CPU runs no vCPU unless it is the only CPU,
//! so the API stays responsive however busy the guests are.
//!
//! Which connections stay is [`admission`]'s policy (read its module doc); this loop
//! applies it: it sizes the socket pool from the heap, gives every socket smoltcp's
//! timeout and keep-alive, aborts a socket stuck closing, and after each accept aborts the
//! connections [`admission::evictions`] names. `/v1/info` shows the counters.

use super::manager::Manager;
use super::sched;
use crate::sys;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::convert::Infallible;
use hypervisor::api::{ApiConfig, Connection, Token, admission};
use hypervisor::backend::choice::{self, WithBackend};
use hypervisor::backend::{Backend, BackendError};
use hypervisor::vm::commit::{self, CommitLimit};
use hypervisor::vm::limits::HostLimits;
use libos::cmdline;
use libos::net::smoltcp::iface::SocketHandle;
use libos::net::smoltcp::socket::tcp;
use libos::net::smoltcp::time::Duration;
use libos::net::smoltcp::wire::IpAddress;
use libos::net::{Addressing, Stack};

pub const DEFAULT_API_PORT: u16 = 8080;
/// On a one-CPU machine, the most network rounds with traffic in a row before a vCPU gets
/// a host-timer tick anyway: the control plane comes first, and a flood of requests still
/// leaves the guests a share of the CPU.
const BUSY_ROUNDS_PER_TICK: u32 = 8;
/// One socket on the API port and the connection it carries.
struct Slot<H: hypervisor::api::ApiHandler> {
    handle: SocketHandle,
    connection: Option<Connection<H>>,
    /// The socket's state at the last look (to log changes and notice accepts).
    state: tcp::State,
    /// Since when the socket has been in a closing state.
    closing_since_ms: Option<u64>,
}

/// States in which the connection is ending: bounded by [`admission::CLOSING_TIMEOUT_MS`].
fn is_closing(state: tcp::State) -> bool {
    use tcp::State::*;
    matches!(state, CloseWait | FinWait1 | FinWait2 | Closing | LastAck)
}

/// A connection is gone: undo what it left (an upload) and count a deadline it hit.
fn retire<B: Backend>(mut connection: Connection<Manager<B>>, manager: &mut Manager<B>) {
    if connection.timed_out() {
        manager.connections.deadlines_hit += 1;
    }
    connection.close(manager);
}

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
    let overcommit = cmdline::value(line, "overcommit").map_or(Ok(100), commit::parse_overcommit);
    let overcommit = overcommit.unwrap_or_else(|e| {
        log::error!("{e}; no overcommit");
        100
    });
    let commit = CommitLimit::new(libos::mm::frame::free_bytes(), overcommit);
    let limits = HostLimits::from_values(|key| cmdline::value(line, key)).unwrap_or_else(|e| {
        log::error!("{e}; the default limits apply");
        HostLimits::default()
    });
    let mut manager = Manager::<B>::new(virt, commit, limits);
    let count = admission::socket_count(libos::mm::heap::total_bytes());
    let mut slots: Vec<Slot<Manager<B>>> = (0..count)
        .map(|_| {
            let handle = stack.add_tcp_socket(admission::SOCKET_RX_BYTES, admission::SOCKET_TX_BYTES);
            let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
            socket.set_timeout(Some(Duration::from_millis(admission::TCP_TIMEOUT_MS)));
            socket.set_keep_alive(Some(Duration::from_millis(admission::TCP_KEEP_ALIVE_MS)));
            Slot { handle, connection: None, state: tcp::State::Closed, closing_since_ms: None }
        })
        .collect();
    log::info!("api: {count} sockets on port {port}");
    manager.connections.sockets_total = count as u32;
    let mut announced = false;
    let mut busy_rounds = 0;
    loop {
        let busy = stack.poll();
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
        let mut accepted = false;
        let mut listening = 0;
        for (index, slot) in slots.iter_mut().enumerate() {
            let socket = stack.sockets.get_mut::<tcp::Socket>(slot.handle);
            if socket.state() != slot.state {
                log::trace!("api: socket {index}: {} -> {}", slot.state, socket.state());
                accepted |= slot.state == tcp::State::Listen;
                slot.state = socket.state();
            }
            if !is_closing(socket.state()) {
                slot.closing_since_ms = None;
            } else if now.saturating_sub(*slot.closing_since_ms.get_or_insert(now))
                >= admission::CLOSING_TIMEOUT_MS
            {
                log::debug!("api: socket {index}: stuck in {}; aborted", socket.state());
                socket.abort();
                manager.connections.deadlines_hit += 1;
                // It listens again on the next round, once smoltcp has sent the reset.
                continue;
            }
            if !socket.is_open() {
                let _ = socket.listen(port);
            }
            if !socket.is_active() {
                // Closed, or back to listening (a reset during the handshake): the
                // connection it carried, if any, is over.
                if let Some(old) = slot.connection.take() {
                    retire(old, &mut manager);
                }
                listening += usize::from(socket.is_listening());
                continue;
            }
            let connection = &mut slot.connection;
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
            if !socket.may_recv()
                && !socket.may_send()
                && let Some(old) = connection.take()
            {
                retire(old, &mut manager);
            }
        }
        if accepted {
            evict(&mut stack, &slots, &mut manager);
        }
        let counters = &mut manager.connections;
        counters.sockets_listening = listening as u32;
        counters.sockets_in_use = counters.sockets_total.saturating_sub(counters.sockets_listening);
        manager.reap();
        if libos::smp::cpu_count() == 1 {
            // One tick of a vCPU at most, then the network again, and none while traffic
            // flows (up to `BUSY_ROUNDS_PER_TICK` rounds): the control plane comes first
            // on a one-CPU machine.
            if busy && busy_rounds < BUSY_ROUNDS_PER_TICK {
                busy_rounds += 1;
            } else {
                busy_rounds = 0;
                sched::run_one_tick();
            }
        }
    }
}

/// Aborts the connections admission evicts (after an accept). Their sockets listen again
/// on the next round, once smoltcp has sent the reset.
fn evict<B: Backend>(stack: &mut Stack, slots: &[Slot<Manager<B>>], manager: &mut Manager<B>) {
    let view: Vec<admission::Socket<IpAddress>> = slots
        .iter()
        .map(|slot| {
            let socket = stack.sockets.get::<tcp::Socket>(slot.handle);
            match (&slot.connection, socket.remote_endpoint()) {
                _ if !socket.is_open() || socket.is_listening() => admission::Socket::Free,
                (Some(connection), Some(remote)) if socket.is_active() => admission::Socket::Connection {
                    peer: remote.addr,
                    last_activity_ms: connection.last_activity_ms(),
                    authenticated: connection.is_authenticated(),
                },
                _ => admission::Socket::Busy,
            }
        })
        .collect();
    for (index, why) in admission::evictions(&view, admission::PER_PEER_CAP, admission::LISTEN_RESERVE) {
        log::debug!("api: socket {index}: unauthenticated connection evicted ({why:?})");
        stack.sockets.get_mut::<tcp::Socket>(slots[index].handle).abort();
        manager.connections.connections_evicted += 1;
    }
}
