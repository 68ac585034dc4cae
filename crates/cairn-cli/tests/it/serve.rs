//! A real `cairn serve` for tests: started on a test's store with TCP on
//! port 0 (the bound address is read from its stdout), stopped with SIGTERM
//! or SIGKILL, killed on drop. Helpers send raw HTTP through cairn-client
//! over the Unix socket or TCP.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{Client, RequestBody};

use crate::Cairn;

/// A running server.
pub struct Server {
    child: Option<Child>,
    socket: PathBuf,
    url: Option<String>,
    resp: Option<std::net::SocketAddr>,
    app: Option<String>,
}

impl Server {
    /// Starts `cairn serve --http 127.0.0.1:0 <args>` on `cairn`'s store
    /// and waits until it listens.
    pub fn start(cairn: &Cairn, args: &[&str]) -> Server {
        let mut full = vec!["serve", "--http", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Server::start_raw(cairn, &full)
    }

    /// Starts `cairn <args>` (a serve command) and waits for its addresses.
    pub fn start_raw(cairn: &Cairn, args: &[&str]) -> Server {
        Server::spawn(cairn.command(args))
    }

    /// Starts a prepared serve command and waits for its addresses.
    pub fn spawn(mut command: std::process::Command) -> Server {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let args: Vec<String> = command.get_args().map(|arg| arg.to_string_lossy().into_owned()).collect();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut socket, mut url, mut resp, mut app) = (None, None, None, None);
        let wants_app = command.get_args().any(|arg| arg == "--http-app");
        let deadline = Instant::now() + Duration::from_secs(20);
        let wants_tcp = args.iter().any(|arg| arg == "--http");
        let wants_resp =
            !args.iter().any(|arg| arg == "--no-resp") && command.get_envs().all(|(k, _)| k != "CAIRN_NO_RESP");
        while socket.is_none()
            || (wants_tcp && url.is_none())
            || (wants_resp && resp.is_none())
            || (wants_app && app.is_none())
        {
            let line = receiver
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server did not start");
            if let Some(path) = line.strip_prefix("cairn: listening on unix:") {
                socket = Some(PathBuf::from(path));
            } else if let Some(address) = line.strip_prefix("cairn: listening on app:") {
                app = Some(address.to_owned());
            } else if let Some(address) = line.strip_prefix("cairn: listening on redis://") {
                resp = Some(address.parse().unwrap());
            } else if let Some(address) = line.strip_prefix("cairn: listening on ") {
                url = Some(address.to_owned());
            }
        }
        Server { child: Some(child), socket: socket.unwrap(), url, resp, app }
    }

    /// The app's address (`--http-app`), as `http://host:port`.
    pub fn app(&self) -> &str {
        self.app.as_deref().expect("the server serves an app (--http-app)")
    }

    /// The Redis-protocol address.
    pub fn resp(&self) -> std::net::SocketAddr {
        self.resp.expect("server serves the Redis protocol")
    }

    /// The Unix socket.
    pub fn socket(&self) -> &PathBuf {
        &self.socket
    }

    /// `http://127.0.0.1:<port>` (or https).
    pub fn url(&self) -> &str {
        self.url.as_deref().expect("server has TCP")
    }

    /// A client over the Unix socket.
    pub fn unix(&self) -> Client {
        Client::unix(&self.socket)
    }

    /// A client over TCP (no credentials).
    pub fn tcp(&self) -> Client {
        Client::tcp(self.url(), None).unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    /// SIGTERM, then waits (at most 20 s) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, "TERM");
        wait(&mut child, Duration::from_secs(20))
    }

    /// Waits (at most `limit`) for the server to exit on its own.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        wait(&mut child, limit)
    }

    /// SIGKILL, then waits.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
    }
}

/// Sends a signal (`TERM`, `INT`) through kill(1).
pub fn signal(child: &Child, name: &str) {
    let status =
        std::process::Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} failed");
}

fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reply, whole.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as NDJSON.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.body).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The error code of a native error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// The rest of a streamed reply, as text, once the server ends it (a follow
/// ended by a revocation or a logout); panics after 10 s.
pub async fn until_end(response: &mut cairn_client::Response) -> String {
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tail = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            tail.extend_from_slice(&chunk);
        }
        tail
    })
    .await
    .expect("the stream ended");
    String::from_utf8_lossy(&rest).into_owned()
}

/// Sends one request and reads the whole reply, whatever its status.
pub async fn call(
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Reply {
    let mut connection = client.connect().await.unwrap();
    let response = connection.send(method, path, headers, RequestBody::from(body.into())).await.unwrap();
    let (status, headers) = (response.status, response.headers.clone());
    let body = response.bytes().await.unwrap().to_vec();
    Reply { status, headers, body }
}

/// The anonymous resident memory of process `pid`, in KiB (Linux).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// CPU time process `pid` used so far (user and system), in seconds (Linux).
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
