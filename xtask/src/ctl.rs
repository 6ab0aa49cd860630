//! `cargo xtask ctl`: the control-plane API from the command line (what `curl` does, with
//! readable output). The token comes from `--token` or `TAPROOT_TOKEN`.

use clap::{Args as ClapArgs, Subcommand};
use taproot_testbed::api::{Client, Response};

#[derive(ClapArgs)]
pub struct Args {
    /// Host port of the API (`cargo xtask run` forwards 8080 by default).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Bearer token (printed by the image at boot).
    #[arg(long, env = "TAPROOT_TOKEN")]
    token: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hypervisor version, CPUs, backend, free memory.
    Info,
    /// List VMs.
    List,
    /// Create a VM.
    Create {
        id: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        #[arg(long, default_value_t = 64)]
        mem: u64,
    },
    /// Add a memory slot.
    Slot {
        id: String,
        slot: u32,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        read_only: bool,
    },
    /// Delete a memory slot.
    Unslot {
        id: String,
        slot: u32,
    },
    /// Load an image (ELF with a PVH note by default).
    Load {
        id: String,
        file: std::path::PathBuf,
        /// flat, pvh, multiboot or elf.
        #[arg(long, default_value = "pvh")]
        format: String,
        /// Load address (flat images).
        #[arg(long)]
        load: Option<String>,
        /// The guest's command line (PVH, multiboot).
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Reset {
        id: String,
    },
    /// Print the console (with --follow, until the VM ends); with --interactive, attach
    /// this terminal to it (keys go to the guest, Ctrl-] detaches).
    Console {
        id: String,
        #[arg(long)]
        follow: bool,
        #[arg(long, short, conflicts_with = "follow")]
        interactive: bool,
    },
    Stats {
        id: String,
    },
    /// Delete a VM (stopping it first).
    Destroy {
        id: String,
    },
}

fn parse_number(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal or 0x-hex)"))
}

fn show(r: std::io::Result<Response>) -> Result<Response, String> {
    let r = r.map_err(|e| format!("cannot reach the API: {e} (is `cargo xtask run` running?)"))?;
    if r.status >= 300 {
        let message = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| r.text());
        return Err(format!("{}: {message}", r.status));
    }
    if !r.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&r.body) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => print!("{}", r.text()),
        }
    }
    Ok(r)
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(args: Args) -> Result<(), String> {
    let client = Client::new(args.port, &args.token);
    let action = |id: &str, name: &str| {
        show(client.post(&format!("/v1/vms/{id}/actions"), format!("{{\"action\":\"{name}\"}}").as_bytes()))
    };
    match args.command {
        Command::Info => show(client.get("/v1/info")).map(drop),
        Command::List => show(client.get("/v1/vms")).map(drop),
        Command::Create { id, vcpus, mem } => {
            show(client.put(
                &format!("/v1/vms/{id}"),
                format!("{{\"vcpus\":{vcpus},\"memory_mib\":{mem}}}").as_bytes(),
            ))
            .map(drop)
        }
        Command::Slot { id, slot, addr, size, read_only } => {
            let body = format!(
                "{{\"guest_address\":{},\"size\":{},\"read_only\":{read_only}}}",
                parse_number(&addr)?,
                parse_number(&size)?
            );
            show(client.put(&format!("/v1/vms/{id}/memslots/{slot}"), body.as_bytes())).map(drop)
        }
        Command::Unslot { id, slot } => {
            show(client.delete(&format!("/v1/vms/{id}/memslots/{slot}"))).map(drop)
        }
        Command::Load { id, file, format, load, cmdline } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut path = format!("/v1/vms/{id}/image?format={format}");
            if let Some(load) = load {
                path.push_str(&format!("&load={load}"));
            }
            if !cmdline.is_empty() {
                path.push_str(&format!("&cmdline={}", query_escape(&cmdline)));
            }
            show(client.put(&path, &bytes)).map(drop)
        }
        Command::Start { id } => action(&id, "start").map(drop),
        Command::Stop { id } => action(&id, "stop").map(drop),
        Command::Pause { id } => action(&id, "pause").map(drop),
        Command::Resume { id } => action(&id, "resume").map(drop),
        Command::Reset { id } => action(&id, "reset").map(drop),
        Command::Stats { id } => show(client.get(&format!("/v1/vms/{id}/stats"))).map(drop),
        Command::Destroy { id } => show(client.delete(&format!("/v1/vms/{id}"))).map(drop),
        Command::Console { id, interactive: true, .. } => crate::console::attach(&client, &id),
        Command::Console { id, follow, .. } => {
            let mut offset = 0u64;
            loop {
                let wait = if follow { "&wait_ms=5000" } else { "" };
                let r = client
                    .get(&format!("/v1/vms/{id}/console?offset={offset}{wait}"))
                    .map_err(|e| format!("cannot reach the API: {e}"))?;
                if r.status >= 300 {
                    return show(Ok(r)).map(drop);
                }
                print!("{}", r.text());
                offset = r.header("x-console-next-offset").and_then(|v| v.parse().ok()).unwrap_or(offset);
                let ended = r.header("x-vm-state").is_some_and(|s| !matches!(s, "running" | "paused"));
                if !follow || (ended && r.body.is_empty()) {
                    return Ok(());
                }
            }
        }
    }
}
