//! Connection commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, CLIENT.
//!
//! `AUTH [user] secret`: a user's password, or a bearer token (`cairn_…`)
//! in place of the password; no user name means the user `default`.
//! Password checks go through the service's login budget (bounded
//! concurrency, backoff per client address and per user).

use bytes::Bytes;
use cairn_service::{Principal, ServiceError};

use super::word;
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, Fail, arity, err, syntax};

/// The Redis version cairn reports: the Streams commands it implements
/// behave as in this version.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

pub(crate) async fn ping(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if args.len() > 2 {
        return Err(arity("ping"));
    }
    if conn.out.proto == 2 && conn.subscribed() {
        // Subscribed mode (RESP2): Redis answers `["pong", message]`.
        conn.out.array(2);
        conn.out.bulk(b"pong");
        conn.out.bulk(args.get(1).map_or(&b""[..], |message| &message[..]));
        return Ok(());
    }
    match args.get(1) {
        Some(message) if args.len() == 2 => conn.out.bulk(message),
        Some(_) => return Err(arity("ping")),
        None => conn.out.simple("PONG"),
    }
    Ok(())
}

pub(crate) async fn echo(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    conn.out.bulk(&args[1]);
    Ok(())
}

/// `ACL WHOAMI`: the authenticated user's name (`default` for the socket's
/// and an open port's clients). Other ACL subcommands are not offered:
/// users are managed with `cairn user` and `/v1/users`.
pub(crate) async fn acl(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    match word(&args[1]).as_str() {
        "whoami" if args.len() == 2 => {
            let name = conn.who()?.user_name().unwrap_or("default").to_owned();
            conn.out.bulk(name.as_bytes());
            Ok(())
        }
        "whoami" => Err(arity("acl|whoami")),
        other => Err(err(format!(
            "unknown subcommand '{other}'. cairn offers ACL WHOAMI; users are managed with `cairn user`"
        ))),
    }
}

pub(crate) async fn select(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    match &args[1][..] {
        b"0" => conn.out.simple("OK"),
        _ => return Err(err("DB index is out of range")),
    }
    Ok(())
}

pub(crate) async fn quit(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    conn.out.simple("OK");
    conn.closing = true;
    Ok(())
}

pub(crate) async fn reset(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    conn.drop_subscriptions();
    conn.name = None;
    conn.multi = None;
    conn.watched.clear();
    conn.out.proto = 2;
    conn.principal = Conn::initial_principal(&conn.app);
    conn.out.simple("RESET");
    Ok(())
}

pub(crate) async fn auth(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let (user, secret) = match args.len() {
        2 => (None, &args[1]),
        3 => (Some(&args[1]), &args[2]),
        _ => return Err(syntax()),
    };
    let principal = authenticate(conn, user, secret).await?;
    conn.become_principal(principal);
    conn.out.simple("OK");
    Ok(())
}

/// Checks a user and password, or a token.
async fn authenticate(conn: &Conn, user: Option<&Bytes>, secret: &Bytes) -> Result<Principal, Fail> {
    let wrong = || Fail::from(ServiceError::unauthenticated("wrong user name or password"));
    let secret = std::str::from_utf8(secret).map_err(|_| wrong())?;
    let name = match user {
        Some(user) => std::str::from_utf8(user).map_err(|_| wrong())?,
        None => "default",
    };
    // A token as the password: alone, with the user `default` (what
    // redis-py, ioredis and node-redis send when only a password is set),
    // or with the token's own user name.
    if secret.starts_with("cairn_") {
        match conn.app.service.login_token(secret) {
            Ok(principal) if user.is_none() || name == "default" || principal.user_name() == Some(name) => {
                return Ok(principal);
            }
            Ok(_) => return Err(wrong()),
            Err(error) if user.is_none() => return Err(error.into()),
            // A password that only looks like a token.
            Err(_) => {}
        }
    }
    Ok(conn.app.service.login_password(name, secret, Some(conn.peer.ip())).await?)
}

pub(crate) async fn hello(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let mut at = 1;
    let mut proto = conn.out.proto;
    if let Some(version) = args.get(1) {
        proto = match &version[..] {
            b"2" => 2,
            b"3" => 3,
            _ => return Err(Fail("NOPROTO unsupported protocol version".to_owned())),
        };
        at = 2;
    }
    if proto != conn.out.proto && conn.subscribed() {
        return Err(err("the protocol cannot change while the connection is subscribed (UNSUBSCRIBE first)"));
    }
    let mut name = None;
    while at < args.len() {
        let option = word(&args[at]);
        match option.as_str() {
            "auth" if at + 2 < args.len() => {
                let principal = authenticate(conn, Some(&args[at + 1]), &args[at + 2]).await?;
                conn.become_principal(principal);
                at += 3;
            }
            "setname" if at + 1 < args.len() => {
                name = Some(args[at + 1].clone());
                at += 2;
            }
            _ => return Err(err(format!("Syntax error in HELLO option '{option}'"))),
        }
    }
    if conn.principal.is_none() {
        return Err(Fail("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_owned()));
    }
    if let Some(name) = name {
        check_client_name(&name)?;
        conn.name = Some(name);
    }
    conn.out.proto = proto;
    let out = &mut conn.out;
    out.map(7);
    out.text("server");
    out.text("redis");
    out.text("version");
    out.text(REDIS_VERSION);
    out.text("proto");
    out.int(i64::from(proto));
    out.text("id");
    out.int(conn.id as i64);
    out.text("mode");
    out.text("standalone");
    out.text("role");
    out.text("master");
    out.text("modules");
    out.array(0);
    Ok(())
}

fn check_client_name(name: &[u8]) -> CmdResult {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(err("Client names cannot contain spaces, newlines or special characters."));
    }
    Ok(())
}

pub(crate) async fn client(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = word(&args[1]);
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            check_client_name(&args[2])?;
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            conn.out.simple("OK");
        }
        ("getname", 2) => match &conn.name {
            Some(name) => conn.out.bulk(name),
            None => conn.out.null(),
        },
        ("id", 2) => conn.out.int(conn.id as i64),
        ("info" | "list", 2) => {
            let line = client_line(conn);
            conn.out.bulk(line.as_bytes());
        }
        ("setinfo", 4) => {
            let attribute = word(&args[2]);
            check_client_name(&args[3])?;
            match attribute.as_str() {
                "lib-name" => conn.lib_name = Some(args[3].clone()),
                "lib-ver" => conn.lib_version = Some(args[3].clone()),
                _ => return Err(err(format!("Unrecognized option '{attribute}'"))),
            }
            conn.out.simple("OK");
        }
        // Clients send these on connect; cairn evicts nothing and keeps no
        // access times, so both are accepted and change nothing.
        ("no-evict" | "no-touch", 3) if matches!(word(&args[2]).as_str(), "on" | "off") => conn.out.simple("OK"),
        ("tracking", _) if args.len() >= 3 && word(&args[2]) == "off" => conn.out.simple("OK"),
        ("tracking", _) => return Err(err("client-side caching (CLIENT TRACKING) is not supported by cairn")),
        ("reply", 3) if word(&args[2]) == "on" => conn.out.simple("OK"),
        ("reply", 3) => return Err(err("CLIENT REPLY OFF|SKIP is not supported by cairn: every command is answered")),
        ("help", 2) => {
            let lines = [
                "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                "GETNAME, SETNAME <name>, ID, INFO, LIST, SETINFO LIB-NAME|LIB-VER <value>",
                "NO-EVICT ON|OFF, NO-TOUCH ON|OFF (accepted; cairn evicts nothing), TRACKING OFF, REPLY ON",
                "HELP",
            ];
            conn.out.array(lines.len());
            for line in lines {
                conn.out.simple(line);
            }
        }
        (
            "setname" | "getname" | "id" | "info" | "list" | "setinfo" | "no-evict" | "no-touch" | "reply" | "help",
            _,
        ) => {
            return Err(err(format!("wrong number of arguments for 'client|{sub}' command")));
        }
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try CLIENT HELP."))),
    }
    Ok(())
}

fn client_line(conn: &Conn) -> String {
    let text =
        |bytes: &Option<Bytes>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    format!(
        "id={} addr={} name={} age={} db=0 sub={} resp={} lib-name={} lib-ver={}\n",
        conn.id,
        conn.peer,
        text(&conn.name),
        conn.created.elapsed().as_secs(),
        conn.subscriptions.len(),
        conn.out.proto,
        text(&conn.lib_name),
        text(&conn.lib_version),
    )
}
