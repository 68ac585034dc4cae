//! Server counters, rendered in the Prometheus text format at `/metrics`
//! together with storage's own ([`cairn_service::StoreStats`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use cairn_service::StoreStats;

/// Counters and gauges of one server.
#[derive(Default, Debug)]
pub struct Metrics {
    /// HTTP requests answered, by status class (1xx..5xx).
    pub requests: [AtomicU64; 5],
    /// Append requests (single or batch) that succeeded.
    pub appends: AtomicU64,
    /// Events those appends returned.
    pub appended_events: AtomicU64,
    /// Payload bytes received in appends.
    pub appended_bytes: AtomicU64,
    /// Streams (reads and follows) open now.
    pub open_streams: AtomicI64,
    /// Follow streams whose client is not keeping up now (their buffer is
    /// full; they continue from storage when the client reads again).
    pub streams_behind: AtomicI64,
    /// Connections open now.
    pub open_connections: AtomicI64,
    /// Connections refused for being over the limit.
    pub refused_connections: AtomicU64,
    /// Redis-protocol connections accepted since start.
    pub resp_connections: AtomicU64,
    /// Redis-protocol commands run since start.
    pub resp_commands: AtomicU64,
    /// Redis-protocol connections in a blocking read now.
    pub blocked_clients: AtomicI64,
    /// The last sample of `resp_commands` for a rate: when, how many, and
    /// the rate it gave.
    ops_sample: std::sync::Mutex<Option<(std::time::Instant, u64, f64)>>,
}

/// Counts a connection as blocked while it lives.
pub struct Blocked<'a>(&'a AtomicI64);

impl<'a> Blocked<'a> {
    pub fn new(metrics: &'a Metrics) -> Blocked<'a> {
        metrics.blocked_clients.fetch_add(1, Relaxed);
        Blocked(&metrics.blocked_clients)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Redis-protocol commands per second, over the time since the previous
    /// sample (taken at most once a second).
    pub fn ops_per_second(&self) -> f64 {
        let now = std::time::Instant::now();
        let count = self.resp_commands.load(Relaxed);
        let mut sample = self.ops_sample.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *sample {
            Some((at, before, rate)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds < 1.0 {
                    return rate;
                }
                let rate = (count - before) as f64 / seconds;
                *sample = Some((now, count, rate));
                rate
            }
            None => {
                *sample = Some((now, count, 0.0));
                0.0
            }
        }
    }

    /// Counts a response.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &StoreStats) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let requests: Vec<(String, String)> = classes
            .iter()
            .zip(&self.requests)
            .map(|(class, count)| (format!("{{class=\"{class}\"}}"), count.load(Relaxed).to_string()))
            .collect();
        let requests: Vec<(&str, String)> = requests.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
        metric("cairn_http_requests_total", "counter", "HTTP responses by status class.", &requests);
        let one = |value: String| [("", value)];
        metric(
            "cairn_appends_total",
            "counter",
            "Successful append requests.",
            &one(self.appends.load(Relaxed).to_string()),
        );
        metric(
            "cairn_appended_events_total",
            "counter",
            "Events returned by successful append requests.",
            &one(self.appended_events.load(Relaxed).to_string()),
        );
        metric(
            "cairn_appended_bytes_total",
            "counter",
            "Payload bytes received in append requests.",
            &one(self.appended_bytes.load(Relaxed).to_string()),
        );
        metric(
            "cairn_store_events_total",
            "counter",
            "Events the store committed since it was opened.",
            &one(store.events_appended.to_string()),
        );
        metric("cairn_fsyncs_total", "counter", "fdatasync calls on the log.", &one(store.fsyncs.to_string()));
        metric(
            "cairn_fsync_seconds_total",
            "counter",
            "Time spent in fdatasync of the log.",
            &one(format!("{:.6}", store.fsync_seconds)),
        );
        metric(
            "cairn_fsync_seconds_max",
            "gauge",
            "The longest fdatasync of the log since open.",
            &one(format!("{:.6}", store.fsync_seconds_max)),
        );
        metric(
            "cairn_log_written_bytes_total",
            "counter",
            "Log bytes committed since open.",
            &one(store.log_bytes_written.to_string()),
        );
        metric("cairn_store_log_bytes", "gauge", "Bytes of log segments on disk.", &one(store.log_bytes.to_string()));
        metric(
            "cairn_store_content_bytes",
            "gauge",
            "Bytes in the content store.",
            &one(store.content_bytes.to_string()),
        );
        if let Some(database) = &store.database {
            metric(
                "cairn_database_commits_total",
                "counter",
                "Commit groups committed in the database.",
                &one(database.commits.to_string()),
            );
            metric(
                "cairn_database_commit_seconds_total",
                "counter",
                "Time spent committing groups, first statement to the commit's answer.",
                &one(format!("{:.6}", database.commit_seconds)),
            );
            metric(
                "cairn_database_commit_seconds_max",
                "gauge",
                "The longest commit of a group since start.",
                &one(format!("{:.6}", database.commit_seconds_max)),
            );
            metric(
                "cairn_database_commits_by_path_total",
                "counter",
                "Commit groups by path: the fast path with rows before the sequencer, the fast path with the \
                 sequencer first, the slow path.",
                &[
                    ("{path=\"rows_first\"}", database.commits_rows_first.to_string()),
                    ("{path=\"lock_first\"}", database.commits_lock_first.to_string()),
                    ("{path=\"slow\"}", database.commits_slow.to_string()),
                ],
            );
            metric(
                "cairn_database_groups_redone_total",
                "counter",
                "Fast-path groups that went again by the slow path (another writer committed first, or a lock).",
                &one(database.groups_redone.to_string()),
            );
            let busy = database.pool_connections.saturating_sub(database.pool_idle);
            metric(
                "cairn_database_pool_connections",
                "gauge",
                "Pooled database connections open, by state.",
                &[("{state=\"idle\"}", database.pool_idle.to_string()), ("{state=\"busy\"}", busy.to_string())],
            );
            metric(
                "cairn_database_pool_waiting",
                "gauge",
                "Callers waiting for a pooled connection.",
                &one(database.pool_waiting.to_string()),
            );
            metric("cairn_database_pool_max", "gauge", "Most pooled connections.", &one(database.pool_max.to_string()));
        }
        metric(
            "cairn_open_streams",
            "gauge",
            "Read and follow streams open.",
            &one(self.open_streams.load(Relaxed).to_string()),
        );
        metric(
            "cairn_streams_behind",
            "gauge",
            "Follow streams whose client is not reading (they resume from storage).",
            &one(self.streams_behind.load(Relaxed).to_string()),
        );
        metric(
            "cairn_open_connections",
            "gauge",
            "Client connections open.",
            &one(self.open_connections.load(Relaxed).to_string()),
        );
        metric(
            "cairn_refused_connections_total",
            "counter",
            "Connections refused over the connection limit.",
            &one(self.refused_connections.load(Relaxed).to_string()),
        );
        out
    }
}
