//! Server commands: COMMAND (from the command table) and INFO (its
//! keyspace counts only the topics the caller may read).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use cairn_service::Glob;

use super::connection::REDIS_VERSION;
use super::word;
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, err};
use crate::resp::frame::Out;
use crate::resp::table::{self, SPECS, Spec};

/// `COMMAND`, `COMMAND COUNT|LIST|INFO name…|DOCS [name…]`.
pub(crate) async fn command(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = args.get(1).map(|a| word(a));
    let out = &mut conn.out;
    match sub.as_deref() {
        None => {
            out.array(SPECS.len());
            for spec in SPECS {
                info_of(out, spec);
            }
        }
        Some("count") => out.int(SPECS.len() as i64),
        Some("list") => {
            out.array(SPECS.len());
            for spec in SPECS {
                out.bulk(spec.name.as_bytes());
            }
        }
        Some("info") => {
            out.array(args.len() - 2);
            for name in &args[2..] {
                match table::find(name) {
                    Some(spec) => info_of(out, spec),
                    None => out.null_array(),
                }
            }
        }
        Some("docs") => {
            let specs: Vec<&Spec> = if args.len() > 2 {
                args[2..].iter().filter_map(|name| table::find(name)).collect()
            } else {
                SPECS.iter().collect()
            };
            out.map(specs.len());
            for spec in specs {
                out.bulk(spec.name.as_bytes());
                let mut arguments = Out { buf: bytes::BytesMut::new(), proto: out.proto };
                let has_arguments = crate::resp::docs::write_arguments(&mut arguments, spec.name);
                out.map(3 + usize::from(has_arguments));
                out.bulk(b"summary");
                out.bulk(spec.summary.as_bytes());
                out.bulk(b"since");
                out.bulk(b"1.0.0");
                out.bulk(b"group");
                out.bulk(spec.group.as_bytes());
                if has_arguments {
                    out.bulk(b"arguments");
                    out.buf.extend_from_slice(&arguments.buf);
                }
            }
        }
        Some(other) => return Err(err(format!("unknown subcommand '{other}'. Try COMMAND HELP."))),
    }
    Ok(())
}

fn info_of(out: &mut Out, spec: &Spec) {
    out.array(10);
    out.bulk(spec.name.as_bytes());
    out.int(spec.arity);
    out.set(spec.flags.len());
    for flag in spec.flags {
        out.simple(flag);
    }
    out.int(spec.keys.0);
    out.int(spec.keys.1);
    out.int(spec.keys.2);
    out.set(0);
    out.set(0);
    out.array(0);
    out.array(0);
}

/// `INFO [section…]`.
/// `CONFIG GET pattern…`: the settings Redis clients and tools ask about,
/// answered from cairn's own (read-only: `CONFIG SET`, `REWRITE` and
/// `RESETSTAT` are refused; cairn's settings are its flags).
pub(crate) async fn config(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = word(&args[1]);
    if sub != "get" {
        return Err(err(format!(
            "CONFIG {} is not offered: cairn's settings are set when it starts (cairn serve --help); CONFIG GET reads them",
            sub.to_uppercase()
        )));
    }
    if args.len() < 3 {
        return Err(crate::resp::error::arity("config|get"));
    }
    let config = &conn.app.config;
    let appendfsync = match config.sync {
        cairn_service::SyncMode::Always => "always",
        cairn_service::SyncMode::Interval(_) => "everysec",
        cairn_service::SyncMode::None => "no",
    };
    let port = conn.app.resp.map_or(0, |addr| addr.port()).to_string();
    let bind = conn.app.resp.map_or_else(String::new, |addr| addr.ip().to_string());
    let settings: [(&str, String); 12] = [
        ("appendonly", "yes".to_owned()),
        ("appendfsync", appendfsync.to_owned()),
        ("bind", bind),
        ("databases", "1".to_owned()),
        ("maxclients", config.max_connections.to_string()),
        ("maxmemory", "0".to_owned()),
        ("maxmemory-policy", "noeviction".to_owned()),
        ("port", port),
        ("proto-max-bulk-len", config.resp_command_bytes_max.to_string()),
        ("protected-mode", if config.resp_require_auth { "yes" } else { "no" }.to_owned()),
        ("save", String::new()),
        ("timeout", "0".to_owned()),
    ];
    let globs: Vec<Glob> = args[2..].iter().map(|pattern| Glob::new(&pattern.to_ascii_lowercase())).collect();
    let found: Vec<&(&str, String)> =
        settings.iter().filter(|(name, _)| globs.iter().any(|glob| glob.matches(name.as_bytes()))).collect();
    conn.out.map(found.len());
    for (name, value) in found {
        conn.out.bulk(name.as_bytes());
        conn.out.bulk(value.as_bytes());
    }
    Ok(())
}

/// `TIME`: the server's clock, seconds and microseconds since the epoch.
pub(crate) async fn time(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    conn.out.array(2);
    conn.out.bulk(now.as_secs().to_string().as_bytes());
    conn.out.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}

pub(crate) async fn info(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let wanted: Vec<String> = args[1..].iter().map(|a| word(a)).collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let show = |section: &str| all || wanted.iter().any(|w| w == section);
    let app = conn.app.clone();
    let who = conn.who()?.clone();
    let info = app.service.info(&who).await?;
    // Store-wide counters and the process only for who sees the whole store.
    let stats = if who.sees_all() { Some(app.service.stats(&who).await?) } else { None };
    let mut text = String::new();
    if show("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\ncairn_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\n",
            info.version,
            std::env::consts::OS,
        );
        if stats.is_some() {
            let _ = write!(text, "process_id:{}\r\n", std::process::id());
        }
        let _ = write!(
            text,
            "tcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            app.resp.map_or(0, |addr| addr.port()),
            info.uptime_seconds,
        );
    }
    if show("clients") && stats.is_some() {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:{}\r\n\r\n",
            app.metrics.open_connections.load(Relaxed),
            app.metrics.blocked_clients.load(Relaxed),
        );
    }
    if show("memory") && stats.is_some() {
        let rss = resident_bytes();
        let _ = write!(
            text,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{:.2}M\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\n\r\n",
            rss as f64 / (1024.0 * 1024.0),
        );
    }
    if show("persistence") {
        let _ = write!(text, "# Persistence\r\nloading:0\r\naof_enabled:1\r\n");
        if let Some(stats) = &stats {
            let _ = write!(
                text,
                "cairn_sync:{}\r\ncairn_fsyncs:{}\r\ncairn_fsync_seconds_total:{:.6}\r\ncairn_log_bytes:{}\r\ncairn_content_bytes:{}\r\n",
                app.config.sync, stats.fsyncs, stats.fsync_seconds, stats.log_bytes, stats.content_bytes,
            );
        }
        text.push_str("\r\n");
    }
    if show("stats")
        && let Some(stats) = &stats
    {
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{:.0}\r\nrejected_connections:{}\r\ncairn_events_appended:{}\r\ncairn_log_bytes_written:{}\r\n\r\n",
            app.metrics.resp_connections.load(Relaxed),
            app.metrics.resp_commands.load(Relaxed),
            app.metrics.ops_per_second(),
            app.metrics.refused_connections.load(Relaxed),
            stats.events_appended,
            stats.log_bytes_written,
        );
    }
    if show("keyspace") {
        let topics = super::keys::names(conn).await?;
        let _ = write!(text, "# Keyspace\r\n");
        if !topics.is_empty() {
            let _ = write!(text, "db0:keys={},expires=0,avg_ttl=0\r\n", topics.len());
        }
    }
    conn.out.bulk(text.as_bytes());
    Ok(())
}

/// The process's resident memory in bytes (Linux; 0 elsewhere). Redis's
/// `used_memory` is its allocator's count; the resident size is the
/// nearest honest figure for a process that is not only a cache.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `MONITOR`: every command the server runs from then on, as it runs, to
/// who sees the whole store only (an administrator; anyone where the port
/// is open). A monitor that does not read is disconnected, never waited for.
pub(crate) async fn monitor(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    if !conn.who()?.sees_all() {
        return Err(crate::resp::error::Fail(
            "NOPERM MONITOR shows every client's commands: administrators only".to_owned(),
        ));
    }
    conn.app.pubsub.monitor(conn.id, conn.pushes.clone());
    conn.monitoring = true;
    conn.out.simple("OK");
    Ok(())
}
