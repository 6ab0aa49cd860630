//! `cargo xtask ctl console ID --interactive`: a VM's serial console on this terminal.
//!
//! The terminal goes raw (no line editing, no echo, no signals from Ctrl-C: every key
//! goes to the guest, whose own tty echoes), and is restored on return and, since xtask
//! aborts on panic, from the panic hook. Two loops share the API:
//! - output: `GET /v1/vms/{id}/console?offset=..&wait_ms=..` long-polls from offset 0,
//!   each answer's `X-Console-Next-Offset` the next offset, until the VM is in a final
//!   state and nothing is left to read;
//! - input: stdin's bytes go to `POST /v1/vms/{id}/console` in chunks of at most
//!   [`MAX_POST`]; the answer says how many the guest's UART took, and the rest is sent
//!   again after a pause (backpressure, nothing dropped). Ctrl-] ([`DETACH`]) detaches:
//!   the bytes typed before it are still sent, the VM runs on.
//!
//! When stdin is not a terminal (a script pipes keys in), its end stops the input, and
//! the output is shown until the VM ends.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taproot_testbed::api::Client;

/// Ctrl-] (ASCII GS), as telnet and virsh console detach.
pub const DETACH: u8 = 0x1d;
/// The most bytes one `POST .../console` carries (the API's per-request cap).
pub const MAX_POST: usize = 64 * 1024;
/// The output long-poll's wait: how late the output loop notices a detach at most.
const WAIT_MS: u32 = 1000;
/// The pause before sending again what the guest did not take yet.
const BACKOFF: Duration = Duration::from_millis(20);
/// How often the input loop looks whether the VM has ended while no key comes.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// The bytes of `input` to send, and whether the detach key ended them.
pub fn split_detach(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|&b| b == DETACH) {
        Some(at) => (&input[..at], true),
        None => (input, false),
    }
}

/// The number of bytes a `POST .../console` answer says were accepted: a JSON object's
/// `accepted`, or a bare number.
pub fn parse_accepted(body: &[u8]) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let n = value.get("accepted").unwrap_or(&value).as_u64()?;
    usize::try_from(n).ok()
}

/// Bytes typed but not yet taken by the guest, oldest first.
#[derive(Default)]
pub struct Outbox {
    pending: Vec<u8>,
}

impl Outbox {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next request's body: the oldest bytes, at most [`MAX_POST`].
    pub fn chunk(&self) -> &[u8] {
        &self.pending[..self.pending.len().min(MAX_POST)]
    }

    /// The guest took the first `n` bytes of the last chunk.
    pub fn accepted(&mut self, n: usize) {
        self.pending.drain(..n.min(self.chunk().len()));
    }

    /// Sends everything through `post` (which answers how many bytes were taken), pausing
    /// while the guest takes none, until the outbox is empty or `give_up` says to stop.
    pub fn deliver(
        &mut self,
        mut post: impl FnMut(&[u8]) -> Result<usize, String>,
        give_up: impl Fn() -> bool,
    ) -> Result<(), String> {
        while !self.is_empty() && !give_up() {
            let taken = post(self.chunk())?;
            if taken == 0 {
                std::thread::sleep(BACKOFF);
            }
            self.accepted(taken);
        }
        Ok(())
    }
}

/// The terminal's settings before raw mode, for the panic hook.
static SAVED: Mutex<Option<rustix::termios::Termios>> = Mutex::new(None);

fn restore_terminal() {
    if let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &saved,
        );
    }
}

/// Raw mode while it lives (when stdin is a terminal).
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Result<Option<Self>, String> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(stdin.as_fd()) {
            return Ok(None);
        }
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).map_err(|e| format!("tcgetattr: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| format!("tcsetattr: {e}"))?;
        Ok(Some(Self))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Whether stdin has bytes to read (or its end) within `timeout`.
fn stdin_ready(timeout: Duration) -> bool {
    let stdin = std::io::stdin();
    let mut fds = [rustix::event::PollFd::new(&stdin, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec::try_from(timeout).unwrap_or_default();
    rustix::event::poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0)
}

/// Shows the console from offset 0 until the VM ends (sets `ended`) or `stop` is set.
fn show_output(client: &Client, id: &str, stop: &AtomicBool, ended: &AtomicBool) -> Result<(), String> {
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        let r = client
            .get(&format!("/v1/vms/{id}/console?offset={offset}&wait_ms={WAIT_MS}"))
            .map_err(|e| format!("console: {e}"))?;
        if r.status >= 300 {
            return Err(format!("console: {} {}", r.status, r.text()));
        }
        let _ = stdout.write_all(&r.body).and_then(|()| stdout.flush());
        offset = r.header("x-console-next-offset").and_then(|v| v.parse().ok()).unwrap_or(offset);
        let final_state = r.header("x-vm-state").is_some_and(|s| !matches!(s, "running" | "paused"));
        if final_state && r.body.is_empty() {
            ended.store(true, Ordering::Relaxed);
            return Ok(());
        }
    }
    Ok(())
}

/// `POST /v1/vms/{id}/console` of `bytes`: how many the guest took.
fn post(client: &Client, id: &str, bytes: &[u8]) -> Result<usize, String> {
    let r =
        client.post(&format!("/v1/vms/{id}/console"), bytes).map_err(|e| format!("console input: {e}"))?;
    if r.status >= 300 {
        return Err(format!("console input: {} {}", r.status, r.text()));
    }
    parse_accepted(&r.body)
        .ok_or_else(|| format!("console input: an answer without a byte count: {}", r.text()))
}

/// Attaches this terminal to VM `id`'s console until Ctrl-] or the VM's end.
pub fn attach(client: &Client, id: &str) -> Result<(), String> {
    eprintln!("xtask: attached to the console of vm {id}; Ctrl-] detaches");
    let stop = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicBool::new(false));
    let output = {
        let (client, id, stop, ended) = (client.clone(), id.to_string(), stop.clone(), ended.clone());
        std::thread::spawn(move || {
            let result = show_output(&client, &id, &stop, &ended);
            // An output error ends the session as the VM's end does.
            ended.store(true, Ordering::Relaxed);
            result
        })
    };
    let raw = RawTerminal::enter()?;
    let input = pump_input(client, id, &ended);
    let interactive = raw.is_some();
    drop(raw);
    if interactive || input.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let output = if ended.load(Ordering::Relaxed) || !interactive {
        output.join().unwrap_or_else(|_| Err("the console output thread panicked".into()))
    } else {
        Ok(()) // Detached: the output loop ends at its next answer; no need to wait.
    };
    eprintln!();
    let how = if ended.load(Ordering::Relaxed) { "the VM ended" } else { "detached" };
    eprintln!("xtask: {how}; vm {id}'s console closed");
    input.and(output)
}

/// Sends stdin's bytes until the detach key, stdin's end, or the VM's end.
fn pump_input(client: &Client, id: &str, ended: &AtomicBool) -> Result<(), String> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    let mut outbox = Outbox::default();
    while !ended.load(Ordering::Relaxed) {
        if !stdin_ready(INPUT_POLL) {
            continue;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("stdin: {e}")),
        };
        let (keys, detach) = split_detach(&buf[..n]);
        outbox.push(keys);
        outbox.deliver(|chunk| post(client, id, chunk), || ended.load(Ordering::Relaxed))?;
        if detach {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detach_key_ends_the_input_and_what_came_before_is_kept() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ls\x1drm -rf\r"), (&b"ls"[..], true));
        assert_eq!(split_detach(b"\x1d"), (&b""[..], true));
        // Ctrl-C and Ctrl-D go to the guest.
        assert_eq!(split_detach(b"\x03\x04"), (&b"\x03\x04"[..], false));
    }

    #[test]
    fn the_accepted_count_is_read_from_json_or_a_bare_number() {
        assert_eq!(parse_accepted(br#"{"accepted": 12}"#), Some(12));
        assert_eq!(parse_accepted(b"7"), Some(7));
        assert_eq!(parse_accepted(br#"{"accepted": -1}"#), None);
        assert_eq!(parse_accepted(br#"{"error": "x"}"#), None);
        assert_eq!(parse_accepted(b""), None);
    }

    #[test]
    fn chunks_are_capped_and_partial_acceptance_keeps_the_rest_in_order() {
        let mut outbox = Outbox::default();
        let data: Vec<u8> = (0..MAX_POST * 2 + 10).map(|i| (i % 251) as u8).collect();
        outbox.push(&data);
        assert_eq!(outbox.chunk().len(), MAX_POST);
        outbox.accepted(5);
        assert_eq!(outbox.chunk()[0], data[5]);
        // More than the chunk cannot be accepted.
        outbox.accepted(usize::MAX);
        assert_eq!(outbox.chunk()[0], data[5 + MAX_POST]);
    }

    #[test]
    fn delivery_resends_what_the_guest_did_not_take() {
        let data: Vec<u8> = (0..MAX_POST + 300).map(|i| (i % 253) as u8).collect();
        let mut outbox = Outbox::default();
        outbox.push(&data);
        let mut received = Vec::new();
        let mut calls = 0;
        // A guest that takes nothing every other request, and at most 1000 bytes.
        let post = |chunk: &[u8]| {
            calls += 1;
            assert!(chunk.len() <= MAX_POST);
            let n = if calls % 2 == 0 { 0 } else { chunk.len().min(1000) };
            received.extend_from_slice(&chunk[..n]);
            Ok(n)
        };
        outbox.deliver(post, || false).unwrap();
        assert!(outbox.is_empty());
        assert_eq!(received, data);
    }

    #[test]
    fn delivery_stops_when_told_and_on_an_error() {
        let mut outbox = Outbox::default();
        outbox.push(b"poweroff -f\r");
        outbox.deliver(|_| Ok(0), || true).unwrap();
        assert_eq!(outbox.chunk(), b"poweroff -f\r");
        let err = outbox.deliver(|_| Err("409".into()), || false).unwrap_err();
        assert_eq!(err, "409");
    }
}
