//! `cairn serve` settings: flags, then `CAIRN_*` environment variables, then
//! a TOML file (`--config`), then defaults. Clap handles the first two; the
//! file fills what they left unset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_service::SyncMode;

/// Default TCP connections served at once (the Unix socket shares the pool).
const MAX_CONNECTIONS_DEFAULT: usize = 4096;
/// Default time a client has to send a request's headers.
const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default Redis-protocol address: MeiliES's port, on loopback.
const RESP_DEFAULT: &str = "127.0.0.1:6480";
/// How long a shutdown waits for open requests before closing them.
const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a request body has to arrive (or, streamed, between chunks).
const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default bound on one Redis command's arguments, in bytes (each argument
/// also counts 16 bytes): a payload of the largest default size and room.
const RESP_COMMAND_BYTES_MAX_DEFAULT: usize = 9 * 1024 * 1024;
/// Default bound on one command before the client authenticated.
const RESP_UNAUTHENTICATED_BYTES_MAX_DEFAULT: usize = 16 * 1024;

/// Flags of `cairn serve` (each also read from the environment variable named
/// in its help, and from the `--config` file under the key named there).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// A TOML file of settings (keys: store, sync, http, socket, tls_cert,
    /// tls_key, insecure_no_auth, max_connections, header_timeout,
    /// body_timeout, shutdown_grace, compat_topic, allow_host, allow_origin,
    /// cors_origin, resp, no_resp, resp_require_auth, resp_command_bytes_max,
    /// resp_unauthenticated_bytes_max, allow_delete, no_procs, no_xs, mount, http_app,
    /// http_app_timeout, http_app_ttl, compact_ratio,
    /// no_compress, segment_bytes, postgres, satellite_of, satellite_topics,
    /// satellite_user). Flags and environment
    /// variables win.
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also listen for HTTP on this TCP address, e.g. 127.0.0.1:8080 (port 0
    /// picks a free port; the bound address is printed). TCP requires
    /// authentication unless --insecure-no-auth. [config: http]
    #[arg(long, env = "CAIRN_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// The PostgreSQL database that keeps the events (`cairn --postgres`,
    /// $CAIRN_POSTGRES; a global flag of the command line, set here by it).
    /// [config: postgres]
    #[arg(skip)]
    pub postgres: Option<String>,

    /// The Unix socket to listen on (mode 0600: local, trusted access).
    /// [default: <store>/cairn.sock] [config: socket]
    #[arg(long, env = "CAIRN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Serve HTTPS on --http with this PEM certificate chain (needs --tls-key). [config: tls_cert]
    #[arg(long, env = "CAIRN_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key for --tls-cert. [config: tls_key]
    #[arg(long, env = "CAIRN_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve TCP without authentication: anyone who reaches the port may
    /// read and write everything. Logs a warning. [config: insecure_no_auth]
    #[arg(long, env = "CAIRN_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Connections served at once; more are answered 503 and closed.
    /// [default: 4096] [config: max_connections]
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Time a client has to send a request's headers before it is
    /// disconnected (slow-loris defence), e.g. 10s. [default: 10s] [config: header_timeout]
    #[arg(long, env = "CAIRN_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,

    /// Time a request body has to arrive, and the longest pause between the
    /// chunks of a streamed one (import); a slower client gets 408 and is
    /// disconnected. [default: 30s] [config: body_timeout]
    #[arg(long, env = "CAIRN_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<String>,

    /// Another name clients use for this server (Host header), e.g.
    /// events.example.com:8080. Without authentication only this server's
    /// own address and loopback names are accepted (a defence against DNS
    /// rebinding); repeat for more. [config: allow_host]
    #[arg(long = "allow-host", env = "CAIRN_ALLOW_HOST", value_name = "HOST", value_delimiter = ',')]
    pub allow_hosts: Vec<String>,

    /// A web origin whose pages may call this server from a browser, e.g.
    /// https://app.example.com; other sites' requests (which browsers mark
    /// with Origin) are refused. Repeat for more. [config: allow_origin]
    #[arg(long = "allow-origin", env = "CAIRN_ALLOW_ORIGIN", value_name = "ORIGIN", value_delimiter = ',')]
    pub allow_origins: Vec<String>,

    /// A web origin whose pages may use this server's API with credentials
    /// across origins (CORS: preflights answered, the browser session's
    /// cookie and EventSource work from that origin; the cookie is
    /// SameSite=Strict, so it reaches only origins of the same site, e.g.
    /// another port). Implies --allow-origin. Off by default; repeat for
    /// more. [config: cors_origin]
    #[arg(long = "cors-origin", env = "CAIRN_CORS_ORIGIN", value_name = "ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// On SIGINT/SIGTERM, how long open requests get to finish. [default: 10s] [config: shutdown_grace]
    #[arg(long, env = "CAIRN_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// The topic the compatibility routes (/events) write and read. [default: events] [config: compat_topic]
    #[arg(long, env = "CAIRN_COMPAT_TOPIC", value_name = "TOPIC")]
    pub compat_topic: Option<String>,

    /// Serve the Redis protocol (RESP2/RESP3: MeiliES commands and Redis
    /// Streams) on this TCP address (port 0 picks a free port). Open on
    /// loopback; any other address requires AUTH. [default: 127.0.0.1:6480] [config: resp]
    #[arg(long, env = "CAIRN_RESP", value_name = "ADDR")]
    pub resp: Option<SocketAddr>,

    /// Do not serve the Redis protocol (wins over --resp). [config: no_resp]
    #[arg(long, env = "CAIRN_NO_RESP")]
    pub no_resp: bool,

    /// Require AUTH on the Redis port even on loopback (MeiliES clients
    /// cannot authenticate, so loopback is open by default). [config: resp_require_auth]
    #[arg(long, env = "CAIRN_RESP_REQUIRE_AUTH")]
    pub resp_require_auth: bool,

    /// The most bytes one Redis command may carry (its arguments, each also
    /// counting 16); a bigger one closes the connection.
    /// [default: 9437184] [config: resp_command_bytes_max]
    #[arg(long, env = "CAIRN_RESP_COMMAND_BYTES_MAX", value_name = "BYTES")]
    pub resp_command_bytes_max: Option<usize>,

    /// The same bound before the client authenticated (where AUTH is
    /// required), so an unauthenticated peer costs little.
    /// [default: 16384] [config: resp_unauthenticated_bytes_max]
    #[arg(long, env = "CAIRN_RESP_UNAUTHENTICATED_BYTES_MAX", value_name = "BYTES")]
    pub resp_unauthenticated_bytes_max: Option<usize>,

    /// Let Redis DEL remove every event of a topic (refused by default:
    /// events are kept). [config: allow_delete]
    #[arg(long, env = "CAIRN_ALLOW_DELETE")]
    pub allow_delete: bool,

    /// Do not run processors (`cairn proc`): registrations are kept and
    /// run by the next server that does. [config: no_procs]
    #[arg(long, env = "CAIRN_NO_PROCS")]
    pub no_procs: bool,

    /// Do not answer xs's HTTP API on STORE/sock (for the unmodified `xs`
    /// command line). [config: no_xs]
    #[arg(long, env = "CAIRN_NO_XS")]
    pub no_xs: bool,

    /// Also serve the store directory DIR as NAME, on its own socket
    /// (DIR/cairn.sock) with its own users and processors; repeat for more.
    /// More come and go while the server runs (POST/DELETE /v1/mounts).
    /// [config: mount]
    #[arg(long = "mount", env = "CAIRN_MOUNT", value_name = "NAME=DIR", value_delimiter = ',')]
    pub mounts: Vec<String>,

    /// Serve HTTP from the store on this TCP address: every request becomes
    /// an `http.request` event, and the `http.response` event(s) whose meta
    /// `request_id` names it answer it (any handler can serve the app).
    /// No authentication: it is the app's own door. [config: http_app]
    #[arg(long, env = "CAIRN_HTTP_APP", value_name = "ADDR")]
    pub http_app: Option<SocketAddr>,

    /// How long an app request waits for its first `http.response` before
    /// a 504. [default: 30s] [config: http_app_timeout]
    #[arg(long, env = "CAIRN_HTTP_APP_TIMEOUT", value_name = "DURATION")]
    pub http_app_timeout: Option<String>,

    /// Retention of `http.request` and `http.disconnect` events (they come
    /// from anyone who reaches the app's port). [default: time:1d] [config: http_app_ttl]
    #[arg(long, env = "CAIRN_HTTP_APP_TTL", value_name = "TTL")]
    pub http_app_ttl: Option<String>,

    /// Rewrite a sealed log segment without its removed events (rm, XDEL,
    /// trims, retention) once they make this share of its bytes: a number
    /// from 0 to 1, or `off` (then only `cairn compact` does it, and compresses).
    /// [default: 0.5] [config: compact_ratio]
    #[arg(long, env = "CAIRN_COMPACT_RATIO", value_name = "RATIO|off")]
    pub compact_ratio: Option<String>,

    /// Size at which the log starts a new segment; only sealed segments
    /// are compacted, so smaller ones give disk back sooner.
    /// [default: 268435456] [config: segment_bytes]
    #[arg(long, env = "CAIRN_SEGMENT_BYTES", value_name = "BYTES")]
    pub segment_bytes: Option<u64>,

    /// Keep sealed log segments plain. By default compaction rewrites each
    /// sealed segment compressed (zstd, in blocks: reading one event
    /// decompresses one block). [config: no_compress]
    #[arg(long, env = "CAIRN_NO_COMPRESS")]
    pub no_compress: bool,

    /// Run as a satellite of the evt hub at this WebSocket URL
    /// (ws://host:port/v1/hub or wss://…): replicate its events of
    /// --satellite-topics, queue transactions on them while the hub is out
    /// of reach and send them when it is back. The password comes from
    /// $CAIRN_PASSWORD (with --satellite-user) or a token from $CAIRN_TOKEN.
    /// [config: satellite_of]
    #[arg(long, env = "CAIRN_SATELLITE_OF", value_name = "URL")]
    pub satellite_of: Option<String>,

    /// The hub's topics (patterns: orders.>) a satellite replicates; they
    /// are written only by replication. [config: satellite_topics]
    #[arg(long, env = "CAIRN_SATELLITE_TOPICS", value_name = "PATTERN", value_delimiter = ',', num_args = 1..)]
    pub satellite_topics: Vec<String>,

    /// The hub's user a satellite logs in as (password in $CAIRN_PASSWORD).
    /// [config: satellite_user]
    #[arg(long, env = "CAIRN_SATELLITE_USER", value_name = "USER")]
    pub satellite_user: Option<String>,
}

/// The settings file: the same settings as the flags, by the same names.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    store: Option<PathBuf>,
    sync: Option<String>,
    http: Option<SocketAddr>,
    socket: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure_no_auth: Option<bool>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    shutdown_grace: Option<String>,
    compat_topic: Option<String>,
    allow_host: Option<Vec<String>>,
    allow_origin: Option<Vec<String>>,
    cors_origin: Option<Vec<String>>,
    resp: Option<SocketAddr>,
    no_resp: Option<bool>,
    resp_require_auth: Option<bool>,
    resp_command_bytes_max: Option<usize>,
    resp_unauthenticated_bytes_max: Option<usize>,
    allow_delete: Option<bool>,
    no_procs: Option<bool>,
    no_xs: Option<bool>,
    mount: Option<Vec<String>>,
    http_app: Option<SocketAddr>,
    http_app_timeout: Option<String>,
    http_app_ttl: Option<String>,
    compact_ratio: Option<toml::Value>,
    segment_bytes: Option<u64>,
    no_compress: Option<bool>,
    postgres: Option<String>,
    satellite_of: Option<String>,
    satellite_topics: Option<Vec<String>>,
    satellite_user: Option<String>,
}

/// Resolved settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store directory.
    pub store: PathBuf,
    /// Durability of appends.
    pub sync: SyncMode,
    /// TCP address for HTTP, if any.
    pub http: Option<SocketAddr>,
    /// The Unix socket path.
    pub socket: PathBuf,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// TCP without authentication.
    pub insecure_no_auth: bool,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send request headers.
    pub header_timeout: Duration,
    /// Time a request body has to arrive.
    pub body_timeout: Duration,
    /// Time open requests get on shutdown.
    pub shutdown_grace: Duration,
    /// Topic of the compatibility routes.
    pub compat_topic: cairn_service::Topic,
    /// More names of this server (Host headers accepted without authentication).
    pub allow_hosts: Vec<String>,
    /// Web origins whose pages may call this server.
    pub allow_origins: Vec<String>,
    /// Web origins answered with CORS headers, credentials allowed.
    pub cors_origins: Vec<String>,
    /// TCP address of the Redis protocol, if served.
    pub resp: Option<SocketAddr>,
    /// Redis clients must AUTH first (always when `resp` is not loopback).
    pub resp_require_auth: bool,
    /// The most bytes of one Redis command.
    pub resp_command_bytes_max: usize,
    /// The most bytes of one Redis command before AUTH.
    pub resp_unauthenticated_bytes_max: usize,
    /// Redis DEL may remove a topic's events.
    pub allow_delete: bool,
    /// Processors run in this server.
    pub procs: bool,
    /// Further store directories served, by name.
    pub mounts: Vec<(String, PathBuf)>,
    /// xs's API is answered on STORE/sock.
    pub xs: bool,
    /// HTTP served from the store: its address, first-response timeout and
    /// the retention of its request events.
    pub http_app: Option<(SocketAddr, Duration, cairn_service::Ttl)>,
    /// Background compaction's threshold (`None`: off).
    pub compact_ratio: Option<f64>,
    /// Size at which the log rolls to a new segment.
    pub segment_bytes: u64,
    /// Sealed segments are compressed.
    pub compress: bool,
    /// A PostgreSQL database that keeps the events instead of the store.
    pub postgres: Option<String>,
    /// The hub this server is a satellite of, if it is one.
    pub satellite: Option<Satellite>,
}

/// A satellite's link to its hub.
#[derive(Clone)]
pub struct Satellite {
    /// The hub's `http(s)://host:port` (from the WebSocket URL given).
    pub url: String,
    /// The topics replicated.
    pub topics: Vec<cairn_service::Pattern>,
    /// `Basic` or `Bearer` credentials, if any.
    pub credentials: Option<SatelliteCredentials>,
}

/// How a satellite logs in to its hub.
#[derive(Clone)]
pub enum SatelliteCredentials {
    /// A user and password.
    Basic(String, String),
    /// A bearer token.
    Token(String),
}

impl std::fmt::Debug for Satellite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password or token.
        f.debug_struct("Satellite").field("url", &self.url).field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl Config {
    /// Merges flags and environment (`args`, `store`, `sync`: `None` when not
    /// given) over the config file over defaults.
    pub fn resolve(args: ServeArgs, store: Option<PathBuf>, sync: Option<String>) -> Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ConfigFile::default(),
        };
        let store = store.or(file.store).unwrap_or_else(|| PathBuf::from(crate::STORE_DEFAULT));
        let sync = SyncMode::parse(sync.or(file.sync).as_deref().unwrap_or("always"))?;
        let socket = args.socket.or(file.socket).unwrap_or_else(|| store.join(crate::SOCKET_NAME));
        let tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate (tls_cert) and a key (tls_key)"),
        };
        let duration = |name: &str, text: Option<String>, default: Duration| -> Result<Duration> {
            match text {
                None => Ok(default),
                Some(text) => cairn_service::parse_duration_ms(&text)
                    .map(Duration::from_millis)
                    .map_err(|rule| anyhow::anyhow!("invalid {name}: {rule}")),
            }
        };
        let http_app = match args.http_app.or(file.http_app) {
            None => None,
            Some(addr) => {
                let timeout = duration(
                    "http_app_timeout",
                    args.http_app_timeout.or(file.http_app_timeout),
                    Duration::from_secs(30),
                )?;
                let ttl = args.http_app_ttl.or(file.http_app_ttl).unwrap_or_else(|| "time:1d".to_owned());
                let ttl = cairn_service::Ttl::parse(&ttl)
                    .map_err(|error| anyhow::anyhow!("invalid http_app_ttl: {error}"))?;
                Some((addr, timeout, ttl))
            }
        };
        let satellite = satellite(
            args.satellite_of.or(file.satellite_of),
            if args.satellite_topics.is_empty() {
                file.satellite_topics.unwrap_or_default()
            } else {
                args.satellite_topics
            },
            args.satellite_user.or(file.satellite_user),
        )?;
        let mounts = if args.mounts.is_empty() { file.mount.unwrap_or_default() } else { args.mounts };
        let mounts = mounts
            .iter()
            .map(|given| {
                let (name, dir) = given
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("invalid mount {given:?}: expected NAME=DIR"))?;
                crate::mounts::check_name(name).map_err(|rule| anyhow::anyhow!("invalid mount: {rule}"))?;
                Ok((name.to_owned(), std::path::absolute(dir)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let max_connections = args.max_connections.or(file.max_connections).unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if max_connections == 0 {
            bail!("invalid max_connections: must be at least 1");
        }
        let compat_topic =
            cairn_service::Topic::new(args.compat_topic.or(file.compat_topic).as_deref().unwrap_or("events"))
                .context("invalid compat_topic")?;
        compat_topic.check_user_writable().context("invalid compat_topic")?;
        let listed = |given: Vec<String>, file: Option<Vec<String>>| -> Vec<String> {
            let given = if given.is_empty() { file.unwrap_or_default() } else { given };
            given
                .into_iter()
                .map(|item| item.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|item| !item.is_empty())
                .collect()
        };
        let allow_hosts = listed(args.allow_hosts, file.allow_host);
        // Browsers leave a scheme's default port out of Origin.
        let cors_origins: Vec<String> = listed(args.cors_origins, file.cors_origin)
            .into_iter()
            .map(|origin| {
                let default = if origin.starts_with("https://") { ":443" } else { ":80" };
                origin.strip_suffix(default).map_or(origin.clone(), str::to_owned)
            })
            .collect();
        for origin in &cors_origins {
            let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !valid {
                bail!(
                    "invalid cors_origin {origin:?}: an origin is scheme://host[:port], e.g. https://app.example.com"
                );
            }
        }
        let mut allow_origins = listed(args.allow_origins, file.allow_origin);
        allow_origins.extend(cors_origins.iter().cloned());
        let resp_command_bytes_max =
            args.resp_command_bytes_max.or(file.resp_command_bytes_max).unwrap_or(RESP_COMMAND_BYTES_MAX_DEFAULT);
        let resp_unauthenticated_bytes_max = args
            .resp_unauthenticated_bytes_max
            .or(file.resp_unauthenticated_bytes_max)
            .unwrap_or(RESP_UNAUTHENTICATED_BYTES_MAX_DEFAULT);
        if resp_command_bytes_max < 1024 || resp_unauthenticated_bytes_max < 1024 {
            bail!("invalid resp_command_bytes_max or resp_unauthenticated_bytes_max: at least 1024 bytes");
        }
        let resp = if args.no_resp || (args.resp.is_none() && file.no_resp.unwrap_or(false)) {
            None
        } else {
            Some(args.resp.or(file.resp).unwrap_or_else(|| RESP_DEFAULT.parse().expect("valid default address")))
        };
        let resp_require_auth = args.resp_require_auth
            || file.resp_require_auth.unwrap_or(false)
            || resp.is_some_and(|addr| !addr.ip().is_loopback());
        let compact_ratio = match (args.compact_ratio, file.compact_ratio) {
            (Some(text), _) => parse_ratio(&text)?,
            (None, Some(toml::Value::String(text))) => parse_ratio(&text)?,
            (None, Some(toml::Value::Float(ratio))) => parse_ratio(&ratio.to_string())?,
            (None, Some(toml::Value::Integer(ratio))) => parse_ratio(&ratio.to_string())?,
            (None, Some(other)) => bail!("invalid compact_ratio {other:?}: a number from 0 to 1, or \"off\""),
            (None, None) => Some(cairn_service::limits::COMPACT_RATIO_DEFAULT),
        };
        let segment_bytes =
            args.segment_bytes.or(file.segment_bytes).unwrap_or(cairn_service::limits::SEGMENT_BYTES_DEFAULT);
        Ok(Config {
            postgres: args.postgres.or(file.postgres),
            compact_ratio,
            segment_bytes,
            compress: !(args.no_compress || file.no_compress.unwrap_or(false)),
            store,
            sync,
            http: args.http.or(file.http),
            socket,
            tls,
            insecure_no_auth: args.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            max_connections,
            header_timeout: duration(
                "header_timeout",
                args.header_timeout.or(file.header_timeout),
                HEADER_TIMEOUT_DEFAULT,
            )?,
            body_timeout: duration("body_timeout", args.body_timeout.or(file.body_timeout), BODY_TIMEOUT_DEFAULT)?,
            shutdown_grace: duration(
                "shutdown_grace",
                args.shutdown_grace.or(file.shutdown_grace),
                SHUTDOWN_GRACE_DEFAULT,
            )?,
            compat_topic,
            allow_hosts,
            allow_origins,
            cors_origins,
            resp,
            resp_require_auth,
            resp_command_bytes_max,
            resp_unauthenticated_bytes_max,
            allow_delete: args.allow_delete || file.allow_delete.unwrap_or(false),
            procs: !(args.no_procs || file.no_procs.unwrap_or(false)),
            mounts,
            xs: !(args.no_xs || file.no_xs.unwrap_or(false)),
            http_app,
            satellite,
        })
    }
}

/// The satellite settings, checked together.
fn satellite(url: Option<String>, topics: Vec<String>, user: Option<String>) -> Result<Option<Satellite>> {
    let Some(url) = url else {
        if !topics.is_empty() || user.is_some() {
            bail!("--satellite-topics and --satellite-user go with --satellite-of URL");
        }
        return Ok(None);
    };
    let base = url.trim_end_matches('/').trim_end_matches("/v1/hub");
    let base = if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        bail!("--satellite-of {url:?}: a WebSocket URL of a hub, ws://host:port/v1/hub or wss://host:port/v1/hub");
    };
    if base.trim_start_matches("http://").trim_start_matches("https://").contains('/') {
        bail!("--satellite-of {url:?}: the hub is at /v1/hub on its server (ws://host:port/v1/hub)");
    }
    if topics.is_empty() {
        bail!("--satellite-of needs --satellite-topics: the hub's topics (patterns) to replicate");
    }
    let topics = topics
        .iter()
        .map(|text| {
            let pattern = cairn_service::Pattern::parse(text)
                .map_err(|error| anyhow::anyhow!("--satellite-topics {text:?}: {error}"))?;
            if text.starts_with(cairn_service::SYSTEM_PREFIX) {
                bail!("--satellite-topics {text:?}: the store's own topics (cairn.…) are not replicated; name the hub's topics");
            }
            Ok(pattern)
        })
        .collect::<Result<Vec<_>>>()?;
    let credentials = match user {
        Some(user) => {
            let password = std::env::var("CAIRN_PASSWORD")
                .map_err(|_| anyhow::anyhow!("--satellite-user needs the password in $CAIRN_PASSWORD"))?;
            Some(SatelliteCredentials::Basic(user, password))
        }
        None => std::env::var("CAIRN_TOKEN").ok().map(SatelliteCredentials::Token),
    };
    Ok(Some(Satellite { url: base, topics, credentials }))
}

/// `off`, or a share from 0 to 1.
fn parse_ratio(text: &str) -> Result<Option<f64>> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(Some(ratio)),
        _ => bail!("invalid compact_ratio {text:?}: a number from 0 to 1, or \"off\""),
    }
}

fn read_file(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}
