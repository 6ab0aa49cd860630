//! The control plane under abuse (issue 12), as one driver the end-to-end tests assert on
//! and `cargo xtask bench` reports from. From the host, at once, for a fixed time:
//! - 32 idle and 32 trickling unauthenticated connections, uploads cut off mid-body,
//!   garbage heads (each abuser reconnects once the server has closed on it);
//! - with the token: a loop creating small VMs until refused, then deleting them, and a
//!   loop adding memory slots to one VM until refused, then deleting them;
//! - optionally a guest that spins on every vCPU the host gives it;
//! - meanwhile the operator (with the token) creates a VM, uploads the `hello` guest,
//!   starts it, reads its console until its line, waits for it to exit and deletes it,
//!   round after round, timing every request.
//!
//! Afterwards every abuser is gone and every VM deleted: the driver waits (bounded) for
//! the sockets in use and the free memory to return to their values before the run and
//! reports what did not come back. Every refusal the floods met must be a 4xx/5xx with a
//! JSON `error`; the driver counts those that were not. A request without an answer in
//! the client's timeout ends the run with an error (with the image's console).

use crate::api::{Client, Response};
use crate::console::Console;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct Abuse {
    /// How long the abusers and the operator run.
    pub duration: Duration,
    /// A VM whose vCPUs spin (`jmp $`) runs throughout, with this many vCPUs.
    pub spinner_vcpus: Option<u32>,
    /// The `hello` guest ELF the operator runs.
    pub hello: Vec<u8>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct AbuseReport {
    /// Connections the abusers opened plus requests the floods and the operator sent.
    pub requests_total: u64,
    /// Every operator request's time to its answer, in milliseconds.
    pub operator_ms: Vec<f64>,
    /// Operator rounds (create, upload, start, console, exit, delete) completed.
    pub operator_rounds: u64,
    /// VMs the flood created before refusals, in all.
    pub flood_vms: u64,
    /// Slots the flood added before refusals, in all.
    pub flood_slots: u64,
    /// Refusals that were not a 4xx/5xx with a JSON `error`.
    pub bad_refusals: u64,
    /// `/v1/info` `connections` at the end of the abuse.
    pub connections_during: String,
    /// 4 KiB frames free before less free after (0 when all came back).
    pub leaked_frames: i64,
    /// Sockets in use after less before.
    pub leaked_sockets: i64,
}

impl AbuseReport {
    /// The `q` quantile (0 to 1) of the operator's request times.
    #[must_use]
    pub fn operator_quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.operator_ms.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * q).round() as usize],
        }
    }
}

fn json(r: &Response) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&r.body).map_err(|e| format!("not JSON ({e}): {}", r.text()))
}

/// A refusal as the API promises it: 4xx/5xx with a JSON `error` string.
fn is_proper_refusal(r: &Response) -> bool {
    (400..600).contains(&r.status) && json(r).is_ok_and(|v| v["error"].is_string())
}

/// `/v1/info`'s (free memory, sockets in use, the connections object).
fn host_state(client: &Client) -> Result<(u64, u64, serde_json::Value), String> {
    let r = client.get("/v1/info").map_err(|e| format!("GET /v1/info: {e}"))?;
    let info = json(&r)?;
    let free = info["memory_free_bytes"].as_u64().ok_or_else(|| format!("no memory_free_bytes: {info}"))?;
    let in_use =
        info["connections"]["sockets_in_use"].as_u64().ok_or_else(|| format!("no sockets: {info}"))?;
    Ok((free, in_use, info["connections"].clone()))
}

/// Reads until the server closes (or the read times out); true if the connection is over.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// What one abusive connection does before it is dropped.
type Act = fn(&mut TcpStream, &AtomicBool, u64, &str);

fn idle(stream: &mut TcpStream, stop: &AtomicBool, _: u64, _: &str) {
    while !stop.load(Ordering::Relaxed) && !closed(stream) {}
}

fn trickle(stream: &mut TcpStream, stop: &AtomicBool, _: u64, _: &str) {
    for byte in b"GET /v1/info HTTP/1.1\r\nHost: taproot\r\nX-Slow: ".iter().cycle() {
        if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() || closed(stream) {
            return;
        }
    }
}

fn cut_upload(stream: &mut TcpStream, _: &AtomicBool, round: u64, token: &str) {
    let auth =
        if round.is_multiple_of(2) { format!("Authorization: Bearer {token}\r\n") } else { String::new() };
    let head = format!(
        "PUT /v1/vms/victim/image?format=flat&load=0x7c00 HTTP/1.1\r\n{auth}Content-Length: 1048576\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&[0xF4; 65536]);
    // Dropped: the upload ends mid-body.
}

fn garbage(stream: &mut TcpStream, _: &AtomicBool, round: u64, _: &str) {
    let noise: Vec<u8> = (0..200u64).map(|i| (i.wrapping_mul(round + 7) % 251) as u8).collect();
    let _ = stream.write_all(&noise);
    let _ = stream.write_all(b"\r\n\r\n");
    while !closed(stream) {}
}

/// Counters the abuser threads share with the driver.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    bad_refusals: AtomicU64,
    flood_vms: AtomicU64,
    flood_slots: AtomicU64,
}

impl Shared {
    /// Counts an authenticated flood request and checks a refusal's form.
    fn sent(&self, r: &std::io::Result<Response>, accepted: u16) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) if r.status == accepted => true,
            Ok(r) => {
                if !is_proper_refusal(r) {
                    self.bad_refusals.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            // No answer in the client's timeout: the operator's timing shows it if it
            // matters; a flood request alone is not the point.
            Err(_) => false,
        }
    }
}

/// Creates `flood<n>` VMs of 1 MiB until refused, deletes them, again.
fn vm_flood(client: Client, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let mut made = 0;
        while !shared.stop.load(Ordering::Relaxed)
            && shared
                .sent(&client.put(&format!("/v1/vms/flood{made}"), br#"{"vcpus": 1, "memory_mib": 1}"#), 201)
        {
            made += 1;
        }
        shared.flood_vms.fetch_add(made, Ordering::Relaxed);
        for i in 0..made {
            shared.sent(&client.delete(&format!("/v1/vms/flood{i}")), 204);
        }
    }
}

/// Adds 2 MiB slots to VM `slots` until refused, deletes them, again.
fn slot_flood(client: Client, shared: Arc<Shared>) {
    // The VM flood may hold every VM or all the memory when this starts: try again until
    // the VM exists (otherwise every slot request meets a 404 and the flood never runs).
    while !shared.stop.load(Ordering::Relaxed) {
        match client.put("/v1/vms/slots", br#"{"vcpus": 1, "memory_mib": 1}"#) {
            Ok(r) if r.status == 201 || r.status == 409 => break,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let mut made = 1;
        loop {
            let body = format!(r#"{{"guest_address": {}, "size": 2097152}}"#, (1u64 << 32) + (made << 21));
            if shared.stop.load(Ordering::Relaxed)
                || !shared.sent(&client.put(&format!("/v1/vms/slots/memslots/{made}"), body.as_bytes()), 201)
            {
                break;
            }
            made += 1;
        }
        shared.flood_slots.fetch_add(made - 1, Ordering::Relaxed);
        for slot in 1..made {
            shared.sent(&client.delete(&format!("/v1/vms/slots/memslots/{slot}")), 204);
        }
    }
}

/// The operator's view: every request timed, every answer's status checked.
struct Operator<'a> {
    client: &'a Client,
    console: &'a mut Console,
    ms: Vec<f64>,
}

impl Operator<'_> {
    fn timed(
        &mut self,
        what: &str,
        r: impl FnOnce(&Client) -> std::io::Result<Response>,
        status: u16,
    ) -> Result<Response, String> {
        let start = Instant::now();
        let r = r(self.client).map_err(|e| {
            let _ = self.console.wait_for("never printed", Duration::from_secs(1));
            format!(
                "the operator's {what} got no answer under abuse ({e}); console:\n{}",
                self.console.transcript()
            )
        })?;
        self.ms.push(start.elapsed().as_secs_f64() * 1000.0);
        if r.status != status {
            return Err(format!("the operator's {what}: {} {}", r.status, r.text()));
        }
        Ok(r)
    }

    /// One round: create, upload `hello`, start, console until its line, exit, delete.
    fn round(&mut self, number: u64, hello: &[u8]) -> Result<(), String> {
        let vm = format!("/v1/vms/op{number}");
        // The VM flood fills the host's VM limit for a moment each round: a refusal then
        // is an answer (503), and the operator tries again.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.timed("create", |c| c.put(&vm, br#"{"vcpus": 1, "memory_mib": 64}"#), 201);
            match r {
                Ok(_) => break,
                Err(e) if e.contains(": 503 ") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        self.timed("upload", |c| c.put(&format!("{vm}/image?format=multiboot"), hello), 200)?;
        self.timed("start", |c| c.post(&format!("{vm}/actions"), br#"{"action": "start"}"#), 200)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut text, mut offset) = (String::new(), 0u64);
        while !text.contains("hello from taproot guest") {
            if Instant::now() > deadline {
                return Err(format!("the hello guest's console under abuse: {text:?}"));
            }
            let path = format!("{vm}/console?offset={offset}&wait_ms=2000");
            let r = self.timed("console", |c| c.get(&path), 200)?;
            offset =
                r.header("x-console-next-offset").and_then(|v| v.parse().ok()).ok_or("no next offset")?;
            text.push_str(&r.text());
        }
        loop {
            let info = json(&self.timed("state", |c| c.get(&vm), 200)?)?;
            if info["state"] == "exited" {
                if info["exit_status"] != 0 {
                    return Err(format!("hello exited badly: {info}"));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{vm} never exited: {info}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.timed("delete", |c| c.delete(&vm), 204)?;
        Ok(())
    }
}

/// Waits (at most a minute) until `done` holds of the host's state; the last state.
fn settle(client: &Client, done: impl Fn(u64, u64) -> bool) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (free, in_use, _) = host_state(client)?;
        if done(free, in_use) || Instant::now() > deadline {
            return Ok((free, in_use));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Abuse {
    /// Runs the abuse against the image behind `client` (its console for diagnosis).
    pub fn run(&self, client: &Client, console: &mut Console) -> Result<AbuseReport, String> {
        let (free_before, in_use_before, _) = host_state(client)?;
        let ok = |r: std::io::Result<Response>, status: u16, what: &str| match r {
            Ok(r) if r.status == status => Ok(r),
            Ok(r) => Err(format!("{what}: {} {}", r.status, r.text())),
            Err(e) => Err(format!("{what}: {e}")),
        };
        ok(client.put("/v1/vms/victim", br#"{"vcpus": 1, "memory_mib": 16}"#), 201, "victim")?;
        if let Some(vcpus) = self.spinner_vcpus {
            let body = format!(r#"{{"vcpus": {vcpus}, "memory_mib": 1}}"#);
            ok(client.put("/v1/vms/spinner", body.as_bytes()), 201, "spinner")?;
            ok(
                client.put("/v1/vms/spinner/image?format=flat&load=0x7c00", b"\xeb\xfe"),
                200,
                "spinner image",
            )?;
            ok(client.post("/v1/vms/spinner/actions", br#"{"action": "start"}"#), 200, "spinner start")?;
        }

        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        let abuser = |act: Act, pause: Duration| {
            let (shared, addr, token) = (shared.clone(), client.addr, client.token.clone());
            std::thread::spawn(move || {
                let mut round = 0u64;
                while !shared.stop.load(Ordering::Relaxed) {
                    if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                        act(&mut stream, &shared.stop, round, &token);
                    }
                    round += 1;
                    std::thread::sleep(pause);
                }
            })
        };
        for _ in 0..32 {
            threads.push(abuser(idle, Duration::from_secs(1)));
            threads.push(abuser(trickle, Duration::from_secs(1)));
        }
        for _ in 0..2 {
            threads.push(abuser(cut_upload, Duration::from_millis(300)));
            threads.push(abuser(garbage, Duration::from_millis(300)));
        }
        for flood in [vm_flood as fn(Client, Arc<Shared>), slot_flood] {
            let (client, shared) = (client.clone(), shared.clone());
            threads.push(std::thread::spawn(move || flood(client, shared)));
        }
        std::thread::sleep(Duration::from_secs(3));

        let mut operator = Operator { client, console, ms: Vec::new() };
        let start = Instant::now();
        let mut rounds = 0;
        let mut result = Ok(());
        while result.is_ok() && (rounds == 0 || start.elapsed() < self.duration) {
            result = operator.round(rounds, &self.hello);
            rounds += 1;
        }
        let connections_during = operator
            .timed("info", |c| c.get("/v1/info"), 200)
            .and_then(|r| json(&r))
            .map(|info| info["connections"].to_string());
        shared.stop.store(true, Ordering::Relaxed);
        for thread in threads {
            let _ = thread.join();
        }
        result?;
        let connections_during = connections_during?;

        for vm in ["victim", "slots", "spinner"] {
            let _ = client.delete(&format!("/v1/vms/{vm}"));
        }
        let (free_after, in_use_after) =
            settle(client, |free, in_use| free >= free_before && in_use <= in_use_before)?;
        Ok(AbuseReport {
            requests_total: shared.requests.load(Ordering::Relaxed) + operator.ms.len() as u64,
            operator_rounds: rounds,
            operator_ms: operator.ms,
            flood_vms: shared.flood_vms.load(Ordering::Relaxed),
            flood_slots: shared.flood_slots.load(Ordering::Relaxed),
            bad_refusals: shared.bad_refusals.load(Ordering::Relaxed),
            connections_during,
            leaked_frames: (free_before as i64 - free_after as i64) / 4096,
            leaked_sockets: in_use_after as i64 - in_use_before as i64,
        })
    }
}
