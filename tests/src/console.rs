//! A running emulator's serial console: lines arrive from a reader thread (QEMU's stdout)
//! or from polling a file (Bochs's COM1 file); tests wait for patterns with a timeout.

use std::fmt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Lines that mean the image failed: waiting for anything else stops at them.
const FAILURE_MARKERS: &[&str] = &["taproot: PANIC", "taproot: exception"];

#[derive(Debug)]
pub enum ConsoleError {
    /// The pattern did not appear in time.
    Timeout { pattern: String, waited: Duration, transcript: String },
    /// The emulator ended first.
    Exited { pattern: String, status: Option<ExitStatus>, transcript: String },
    /// The image reported a panic or exception.
    Failed { line: String, transcript: String },
    /// The emulator could not be started or read.
    Io(String),
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleError::Timeout { pattern, waited, transcript } => {
                write!(f, "no line containing {pattern:?} within {waited:?}; console so far:\n{transcript}")
            }
            ConsoleError::Exited { pattern, status, transcript } => write!(
                f,
                "emulator ended ({status:?}) before a line containing {pattern:?}; console:\n{transcript}"
            ),
            ConsoleError::Failed { line, transcript } => {
                write!(f, "the image failed: {line}\nconsole:\n{transcript}")
            }
            ConsoleError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConsoleError {}

/// Where console lines come from.
pub(crate) enum Source {
    /// Complete lines from a reader thread.
    Lines(Receiver<String>),
    /// A file the emulator appends to; `offset` bytes consumed, `partial` an unfinished line.
    File { path: std::path::PathBuf, offset: u64, partial: String },
}

/// The console of one emulator run. Dropping it stops the emulator.
pub struct Console {
    source: Source,
    child: Child,
    /// Kill the whole process group (Bochs runs under `script`).
    kill_group: bool,
    transcript: String,
    started: Instant,
    exit_status: Option<ExitStatus>,
    /// Print each line as it is read (`cargo xtask run` shows the console live).
    echo: bool,
}

impl Console {
    pub(crate) fn new(child: Child, source: Source, kill_group: bool) -> Self {
        Self {
            source,
            child,
            kill_group,
            transcript: String::new(),
            started: Instant::now(),
            exit_status: None,
            echo: false,
        }
    }

    /// Prints every line from now on as it is read.
    pub fn set_echo(&mut self, echo: bool) {
        self.echo = echo;
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Time since the emulator was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a line containing `pattern` and returns it. Fails early on a panic or
    /// exception report (unless that is what `pattern` asks for) and when the emulator ends.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, ConsoleError> {
        let deadline = Instant::now() + timeout;
        let watch_failures = !FAILURE_MARKERS.iter().any(|m| pattern.contains(m) || m.contains(pattern));
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    pattern: pattern.into(),
                    waited: timeout,
                    transcript: self.transcript.clone(),
                });
            }
            match self.next_line(deadline - now)? {
                Some(line) => {
                    if line.contains(pattern) {
                        return Ok(line);
                    }
                    if watch_failures && FAILURE_MARKERS.iter().any(|m| line.contains(m)) {
                        // Give the rest of the report a moment to arrive.
                        let until = Instant::now() + Duration::from_millis(500);
                        while let Ok(Some(_)) =
                            self.next_line(until.saturating_duration_since(Instant::now()))
                        {
                        }
                        return Err(ConsoleError::Failed { line, transcript: self.transcript.clone() });
                    }
                }
                None => {
                    if self.has_exited() {
                        // Drain what is left before giving up.
                        while let Ok(Some(line)) = self.next_line(Duration::from_millis(100)) {
                            if line.contains(pattern) {
                                return Ok(line);
                            }
                        }
                        return Err(ConsoleError::Exited {
                            pattern: pattern.into(),
                            status: self.exit_status,
                            transcript: self.transcript.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Waits for the emulator to end by itself; kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ConsoleError> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(Some(_)) = self.next_line(Duration::from_millis(20)) {}
            if self.has_exited() {
                while let Ok(Some(_)) = self.next_line(Duration::from_millis(50)) {}
                return Ok(self.exit_status.expect("has_exited sets the status"));
            }
            if Instant::now() >= deadline {
                return Err(ConsoleError::Timeout {
                    pattern: "<emulator exit>".into(),
                    waited: timeout,
                    transcript: self.transcript.clone(),
                });
            }
        }
    }

    fn has_exited(&mut self) -> bool {
        if self.exit_status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit_status = Some(status);
        }
        self.exit_status.is_some()
    }

    /// The next complete line, or `None` if none arrived within `wait`.
    fn next_line(&mut self, wait: Duration) -> Result<Option<String>, ConsoleError> {
        let line = match &mut self.source {
            Source::Lines(rx) => match rx.recv_timeout(wait.min(Duration::from_millis(200))) {
                Ok(line) => Some(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    if matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected)) {
                        // The reader ended: stdout closed, the emulator is going away.
                        std::thread::sleep(wait.min(Duration::from_millis(50)));
                    }
                    None
                }
            },
            Source::File { path, offset, partial } => {
                if let Some(pos) = partial.find('\n') {
                    let line: String = partial.drain(..=pos).collect();
                    Some(line)
                } else {
                    let bytes = read_from(path, *offset).map_err(|e| ConsoleError::Io(e.to_string()))?;
                    if bytes.is_empty() {
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                        None
                    } else {
                        *offset += bytes.len() as u64;
                        partial.push_str(&String::from_utf8_lossy(&bytes));
                        return self.next_line(Duration::ZERO);
                    }
                }
            }
        };
        Ok(line.map(|l| {
            let l = l.trim_end_matches(['\n', '\r']).replace('\r', "");
            if self.echo {
                println!("{l}");
            }
            self.transcript.push_str(&l);
            self.transcript.push('\n');
            l
        }))
    }

    /// Prints console lines as they come until the emulator ends; returns its status.
    pub fn follow(&mut self, mut print: impl FnMut(&str)) -> Option<ExitStatus> {
        loop {
            match self.next_line(Duration::from_millis(200)) {
                Ok(Some(line)) => print(&line),
                Ok(None) if self.has_exited() => {
                    while let Ok(Some(line)) = self.next_line(Duration::from_millis(100)) {
                        print(&line);
                    }
                    return self.exit_status;
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
    }

    /// Stops the emulator now.
    pub fn kill(&mut self) {
        if self.has_exited() {
            return;
        }
        if self.kill_group {
            // The child leads its own process group (see `bochs.rs`): end the group so the
            // emulator under `script` goes too, and nothing else.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        self.exit_status = self.child.wait().ok();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses `key=value` words out of a console line (the banner, `vm ... exited` lines).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_found_by_exact_key() {
        let banner = "taproot: ready cpus=2 mem=511 virt=svm features=npt,vgif,asids=16";
        assert_eq!(field(banner, "cpus"), Some("2"));
        assert_eq!(field(banner, "virt"), Some("svm"));
        assert_eq!(field(banner, "features"), Some("npt,vgif,asids=16"));
        assert_eq!(field(banner, "asids"), None);
        assert_eq!(field(banner, "cpu"), None);
    }
}
