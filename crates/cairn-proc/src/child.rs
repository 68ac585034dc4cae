//! A processor's program: spawned in its own process group (so a shell's
//! children stop with it), stdout read as bounded lines, stdin fed from a
//! bounded queue, stderr kept as `<name>.log` events (bounded lines, a
//! bounded rate, the newest `LOG_EVENTS_KEPT` kept).

use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_service::{Batch, NewEvent, Principal, Service, Topic, Ttl};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::spec::Spec;

/// A stdout line longer than this stops the processor (an event's payload
/// is at most 8 MiB; as base64 in JSON, about 11 MiB).
pub const LINE_BYTES_MAX: usize = 12 * 1024 * 1024;
/// A stderr line is cut to this many bytes.
pub const LOG_LINE_BYTES_MAX: usize = 4096;
/// At most this many stderr lines a second become events; the rest are
/// counted in the next one.
pub const LOG_LINES_PER_SECOND: u32 = 100;
/// `<name>.log` keeps its newest this many events (`last:<n>`).
pub const LOG_EVENTS_KEPT: u64 = 1000;
/// How long a program has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Environment variables the server may hold secrets in; a program does
/// not inherit them.
const SECRETS: [&str; 3] = ["CAIRN_PASSWORD", "CAIRN_TOKEN", "CAIRN_POSTGRES"];

/// A line from stdout, or why reading stopped.
pub enum Line {
    /// A line without its newline.
    Line(Vec<u8>),
    /// A line over [`LINE_BYTES_MAX`].
    TooLong,
}

/// A running program.
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its pid (and process group).
    pub pid: u32,
    /// Bytes for its stdin; dropping it closes stdin.
    pub stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// Its stdout, line by line; closed at end of file.
    pub stdout: mpsc::Receiver<Line>,
    /// Stopped and reaped: its process group id may belong to another
    /// group by now, so it is never signalled again.
    reaped: bool,
}

impl Running {
    /// Stops the program (see [`stop`]); returns its exit status.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let status = stop(&mut self.child, self.pid).await;
        self.reaped = status.is_some();
        status
    }
}

impl Drop for Running {
    /// A runner dropped without stopping its program (its task aborted)
    /// takes the whole process group with it, not only the direct child
    /// (`kill_on_drop`).
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid, Signal::KILL);
        }
    }
}

/// Kills a process group when dropped unless disarmed: a command's run
/// aborted mid-way (the server stopping) takes its shell's children too.
pub struct GroupGuard(pub Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_group(pid, Signal::KILL);
        }
    }
}

/// Who a program runs for: its name, registration and principal, for its
/// environment and its log.
pub struct Owner<'a> {
    /// The service its log goes through.
    pub service: &'a Service,
    /// The processor's name.
    pub name: &'a str,
    /// The registration's id.
    pub proc_id: &'a str,
    /// Who its log is written as.
    pub who: &'a Principal,
}

/// Starts `spec`'s program with piped stdin (if `stdin`) and stdout; its
/// stderr goes to `<name>.log`.
pub fn spawn(spec: &Spec, owner: &Owner<'_>, stdin: bool) -> std::io::Result<Running> {
    let mut command = command(spec, owner.name, owner.proc_id);
    command.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default();
    let stdin = child.stdin.take().map(|mut pipe| {
        let (send, mut receive) = mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            while let Some(bytes) = receive.recv().await {
                if pipe.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            // Dropping the pipe closes the program's stdin.
        });
        send
    });
    // Lines wait here while a commit runs: at most 8 (of at most
    // `LINE_BYTES_MAX` each), then the program waits on its pipe.
    let (send, stdout) = mpsc::channel(8);
    let out = child.stdout.take().expect("stdout is piped");
    tokio::spawn(read_lines(out, send));
    let err = child.stderr.take().expect("stderr is piped");
    let log = Log {
        service: owner.service.clone(),
        who: owner.who.clone(),
        topic: Topic::new(&format!("{}.log", owner.name)).ok(),
        proc_id: owner.proc_id.to_owned(),
    };
    tokio::spawn(log.run(err));
    Ok(Running { child, pid, stdin, stdout, reaped: false })
}

/// `spec`'s program as every processor starts it: the server's
/// environment without its secrets, plus the registration's and
/// `CAIRN_PROC_NAME` / `CAIRN_PROC_ID`; its working directory; stdout and
/// stderr piped (stdin piped, for the caller to change); in a process
/// group of its own; killed if dropped.
pub fn command(spec: &Spec, name: &str, proc_id: &str) -> Command {
    let mut command = Command::new(&spec.argv[0]);
    command.args(&spec.argv[1..]);
    for secret in SECRETS {
        command.env_remove(secret);
    }
    command.envs(&spec.env);
    command.env("CAIRN_PROC_NAME", name).env("CAIRN_PROC_ID", proc_id);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    command
}

async fn read_lines(out: impl AsyncRead + Unpin, send: mpsc::Sender<Line>) {
    let mut reader = BufReader::with_capacity(64 * 1024, out);
    loop {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = match reader.fill_buf().await {
                Ok(buf) => buf,
                Err(_) => return,
            };
            if buf.is_empty() {
                // End of file: a last line without a newline still counts.
                if !line.is_empty() && !too_long {
                    let _ = send.send(Line::Line(line)).await;
                }
                return;
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                line.extend_from_slice(&buf[..take - usize::from(done)]);
                too_long = line.len() > LINE_BYTES_MAX;
                if too_long {
                    line = Vec::new();
                }
            }
            reader.consume(take);
            if done {
                break;
            }
        }
        let line = if too_long { Line::TooLong } else { Line::Line(line) };
        if send.send(line).await.is_err() {
            return;
        }
    }
}

/// Stops a program: SIGTERM to its process group, SIGKILL after
/// [`STOP_GRACE`]; returns its exit status.
pub async fn stop(child: &mut Child, pid: u32) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        kill_group(pid, Signal::KILL);
        return Some(status);
    }
    kill_group(pid, Signal::TERM);
    let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            kill_group(pid, Signal::KILL);
            child.wait().await.ok()
        }
    };
    // Whatever the program left behind in its group goes too.
    kill_group(pid, Signal::KILL);
    status
}

/// Signals a process group (a group gone is fine).
pub fn kill_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, signal);
    }
}

/// Describes how a program ended.
pub fn describe(status: Option<std::process::ExitStatus>) -> (String, serde_json::Value) {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(status) if status.success() => ("exited with status 0".to_owned(), serde_json::json!({ "code": 0 })),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (format!("exited with status {code}"), serde_json::json!({ "code": code })),
            (None, Some(signal)) => (format!("killed by signal {signal}"), serde_json::json!({ "signal": signal })),
            (None, None) => ("ended".to_owned(), serde_json::json!({})),
        },
        None => ("its status is unknown".to_owned(), serde_json::json!({})),
    }
}

/// stderr → `<name>.log`.
struct Log {
    service: Service,
    who: Principal,
    topic: Option<Topic>,
    proc_id: String,
}

impl Log {
    async fn run(self, err: impl AsyncRead + Unpin) {
        let mut reader = BufReader::new(err);
        let mut window = Instant::now();
        let mut lines_in_window = 0u32;
        let mut dropped = 0u64;
        let mut warned = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line is read whole but kept to its first bytes; a line
            // without end is cut every 64 KiB read.
            let mut read = 0usize;
            loop {
                let buf = match reader.fill_buf().await {
                    Ok(buf) if !buf.is_empty() => buf,
                    _ => {
                        if !line.is_empty() {
                            self.append(&line, dropped, &mut warned).await;
                        }
                        return;
                    }
                };
                let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(at) => (at + 1, true),
                    None => (buf.len(), false),
                };
                let keep = (take - usize::from(done)).min(LOG_LINE_BYTES_MAX.saturating_sub(line.len()));
                line.extend_from_slice(&buf[..keep]);
                read += take;
                reader.consume(take);
                if done || read >= 64 * 1024 {
                    break;
                }
            }
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                lines_in_window = 0;
            }
            if lines_in_window >= LOG_LINES_PER_SECOND {
                dropped += 1;
                continue;
            }
            lines_in_window += 1;
            self.append(&line, dropped, &mut warned).await;
            dropped = 0;
        }
    }

    async fn append(&self, line: &[u8], dropped: u64, warned: &mut bool) {
        let Some(topic) = &self.topic else { return };
        let mut meta = serde_json::json!({ "proc_id": self.proc_id });
        if dropped > 0 {
            meta["dropped"] = dropped.into();
        }
        let event = NewEvent {
            topic: Some(topic.clone()),
            meta: Some(meta.to_string()),
            payload: Some(String::from_utf8_lossy(line).into_owned().into_bytes()),
            ttl: Ttl::Last { n: LOG_EVENTS_KEPT },
            ..NewEvent::default()
        };
        let batch = Batch { events: vec![event], ..Batch::default() };
        if let Err(error) = self.service.append(&self.who, batch).await
            && !*warned
        {
            *warned = true;
            tracing::warn!("processor log {topic}: {error}; its stderr is not kept");
        }
    }
}
