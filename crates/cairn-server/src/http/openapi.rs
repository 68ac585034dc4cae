//! `GET /openapi.json`: an OpenAPI 3.1 description of every route, built
//! from the table below. A test compares the table with the router and
//! calls every documented route on a real server.

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::json_response;

/// Query parameters of reads and follows.
const READ: &[(&str, &str)] = &[
    ("after", "Start after this event id (exclusive)."),
    ("from_seq", "Start at this seq (one topic only)."),
    ("last", "Only the newest n events."),
    ("limit", "At most n events."),
    ("reverse", "Newest first (not with follow)."),
    ("follow", "After history, keep streaming live events."),
    ("threshold", "With follow: a cairn.threshold frame when history ends."),
    ("pulse", "With follow: a cairn.pulse frame after this long without events (ms or a duration like 5s)."),
    ("content", "Include payloads (content, or content_base64 when not UTF-8)."),
];
const TOPIC_PATTERN: &[(&str, &str)] =
    &[("topic", "Topic or pattern: orders.17, orders.* (one level), orders.> (the rest); default > (all).")];
const APPEND: &[(&str, &str)] = &[
    ("type", "Event type (or header Cairn-Type)."),
    ("meta", "Meta, a JSON object (or header Cairn-Meta)."),
    ("expect", "any, none, <seq>, unchanged-since:<id> (or header Cairn-Expect); 409 when it fails."),
    ("ttl", "forever, ephemeral, time:<duration>, last:<n> (or header Cairn-Ttl)."),
    ("key", "Idempotency key (or header Idempotency-Key): a retry returns the original event."),
    (
        "chunked",
        "true: append the event now and its payload in pieces as the body arrives (chunked upload); readable while written.",
    ),
];

/// Query parameters: (name, description).
type QueryParams = &'static [(&'static str, &'static str)];

/// (method, path, summary, query parameters). Path parameters come from `{…}`.
pub(crate) const ROUTES: &[(&str, &str, &str, &[QueryParams])] = &[
    (
        "get",
        "/v1/topics",
        "The readable topics by name with their count, first and last seq, and last id.",
        &[&[
            ("pattern", "Only topics this pattern matches (orders.*, orders.>)."),
            ("contains", "Only topics whose name contains this text."),
            ("after", "Only topics after this name (paging)."),
            ("limit", "At most n topics (1 to 10000)."),
        ]],
    ),
    ("get", "/v1/topics/{topic}", "A topic's head; its ETag is what If-Match on an append takes.", &[]),
    (
        "post",
        "/v1/topics/{topic}/events",
        "Append one event; the body is the payload. If-Match: a topic ETag (412 when it moved).",
        &[APPEND],
    ),
    (
        "get",
        "/v1/topics/{topic}/events",
        "Read (and follow) one topic. NDJSON, or SSE with Accept: text/event-stream.",
        &[READ],
    ),
    (
        "post",
        "/v1/batch",
        "Append an atomic batch: NDJSON or a JSON array of {topic, type?, meta?, content|content_base64?, ttl?, expect?}.",
        &[&[("key", "Idempotency key (or header Idempotency-Key).")]],
    ),
    (
        "get",
        "/v1/events",
        "Read (and follow) events of a topic or pattern. NDJSON, or SSE with Accept: text/event-stream (Last-Event-ID resumes).",
        &[TOPIC_PATTERN, READ],
    ),
    ("get", "/v1/events/{id}", "One event by id.", &[&[("content", "Include the payload.")]]),
    ("delete", "/v1/events/{id}", "Remove one event (others keep their seqs).", &[]),
    (
        "get",
        "/v1/events/{id}/content",
        "An event's payload as raw bytes; for chunked content, each piece as it is written, to the end.",
        &[],
    ),
    ("post", "/v1/cas", "Store content; replies {hash, hex, size}.", &[]),
    ("put", "/v1/cas", "Store content; replies {hash, hex, size}.", &[]),
    ("get", "/v1/cas/{hash}", "Content by SRI (percent-encoded) or hex, verified.", &[]),
    ("head", "/v1/cas/{hash}", "Whether content exists, and its length.", &[]),
    ("delete", "/v1/cas/{hash}", "Delete content put on its own (409 while an event's payload).", &[]),
    ("get", "/v1/consumers", "Every consumer and its last acknowledged id.", &[]),
    ("get", "/v1/consumers/{name}", "A consumer's position.", &[]),
    (
        "put",
        "/v1/consumers/{name}",
        "Acknowledge up to an id (?id= or body {id}); durable on reply.",
        &[&[("id", "The event id.")]],
    ),
    ("delete", "/v1/consumers/{name}", "Delete a consumer (admin).", &[]),
    ("get", "/v1/consumers/{name}/events", "Read (and follow) after the consumer's last ack.", &[TOPIC_PATTERN, READ]),
    (
        "put",
        "/v1/consumers/{name}/snapshot",
        "Store the body (at most 16 MiB) as the consumer's snapshot made at an event, and move the consumer there, atomically.",
        &[&[("id", "The event id the snapshot was made at."), ("owner", "Another owner's consumer (admins).")]],
    ),
    (
        "get",
        "/v1/consumers/{name}/snapshot",
        "The consumer's snapshot; the id it was made at is in Cairn-Snapshot-At.",
        &[&[("owner", "Another owner's consumer (admins).")]],
    ),
    ("get", "/v1/users", "List users (admin).", &[]),
    ("post", "/v1/users", "Add a user (admin): {name, password, read?, write?, admin?}.", &[]),
    ("delete", "/v1/users/{name}", "Remove a user and its tokens (admin).", &[]),
    ("put", "/v1/users/{name}/password", "Set a password (admin or the user): {password}.", &[]),
    ("post", "/v1/users/{name}/tokens", "Issue a bearer token (admin or the user); shown once.", &[]),
    ("delete", "/v1/tokens/{id}", "Revoke a token by id (admin).", &[]),
    ("post", "/v1/import", "Import an export (NDJSON with content), keeping ids and seqs (admin).", &[]),
    ("post", "/v1/verify", "Check every record and content hash (admin).", &[]),
    (
        "get",
        "/v1/export/extras",
        "What an export of the whole store carries after its events (admin): content stored on its own, then state records (consumers, groups, snapshots), as NDJSON.",
        &[],
    ),
    (
        "post",
        "/v1/backup",
        "Copy a consistent snapshot of the store to ?dir= (an absolute path on the server's machine; new, empty, or an earlier backup of this store, then only what is new) while it runs (admin).",
        &[],
    ),
    (
        "post",
        "/v1/compact",
        "Rewrite sealed log segments without their removed events, where those make at least ?ratio= (0 to 1, default 0) of a segment (admin).",
        &[],
    ),
    (
        "get",
        "/v1/hub",
        "The evt hub protocol over WebSocket: messages subj#tok\\n<json> (evt.pub, evt.sub, evt.unsub, evt.mon, evt.unmon, evt.sat, evt.stat), pushes evt.update.",
        &[],
    ),
    (
        "post",
        "/v1/transactions",
        "Commit a transaction of keyed actions {id?, base?, created?, extra?, acts: [{top, key, cmd: new|mod|del, arg?}]} as one batch sharing one rev; 409 names each key changed after base; a resent id is answered as the first time. On a satellite, one on the hub's topics is queued for the hub: 202 {queued}.",
        &[],
    ),
    (
        "get",
        "/v1/state/{topic}",
        "The topic's keys with their latest state, rev and last event id, in key order.",
        &[&[("after", "Only keys after this one (paging)."), ("limit", "At most n keys (1 to 10000; default 1000).")]],
    ),
    (
        "get",
        "/v1/state/{topic}/{key}",
        "A key's latest state, rev and last event id (provisional: true on a satellite when transactions queued for the hub change it).",
        &[&[("rev", "The state as of this revision (replayed).")]],
    ),
    ("get", "/v1/mounts", "The store directories this server serves besides its own (admins).", &[]),
    (
        "post",
        "/v1/mounts/{name}",
        "Serve the store directory {\"dir\": \"/absolute/path\"} as {name}, on its own socket dir/cairn.sock with its own users and processors (admins); kept across restarts.",
        &[],
    ),
    (
        "delete",
        "/v1/mounts/{name}",
        "Stop serving mount {name}: its requests finish, its processors stop, its store closes (admins).",
        &[],
    ),
    (
        "get",
        "/v1/procs",
        "The processors running (those whose cairn.proc.<name>.create the caller may read): kind, state, pid, restarts, position, lag.",
        &[],
    ),
    (
        "post",
        "/v1/procs/{name}",
        "Register or replace processor {name}; the body is its registration {kind, run|sh, topics?, start?, duplex?, lines?, env?, cwd?, restart?, concurrency?, timeout_ms?}. 201 once it runs, 400 when invalid (the last good one runs on).",
        &[],
    ),
    ("delete", "/v1/procs/{name}", "Stop processor {name} (appends cairn.proc.<name>.term); 204 once stopped.", &[]),
    ("get", "/v1/procs/{name}/logs", "Read (and follow) a processor's stderr lines ({name}.log).", &[READ]),
    ("get", "/v1/info", "Version and store facts.", &[]),
    ("get", "/healthz", "200 while serving, 503 while stopping; needs no credentials.", &[]),
    ("get", "/metrics", "Prometheus metrics.", &[]),
    ("get", "/openapi.json", "This document.", &[]),
    ("get", "/v1/groups", "Every consumer group on a readable topic: lag, pending, oldest pending age (ms).", &[]),
    (
        "get",
        "/v1/topics/{topic}/groups/{group}",
        "A consumer group: its consumers (pending, idle) and pending entries.",
        &[&[("start", "Pending entries from this stream id."), ("count", "At most n pending entries (1 to 1000).")]],
    ),
    ("post", "/v1/topics/{topic}/groups/{group}/ack", "Acknowledge entries: {ids: [stream ids]}.", &[]),
    (
        "post",
        "/v1/topics/{topic}/groups/{group}/claim",
        "Give pending entries to a consumer: {consumer, ids, min_idle_ms?}.",
        &[],
    ),
    (
        "put",
        "/v1/topics/{topic}/groups/{group}/position",
        "Set the group's last delivered entry: {id: stream id or $}.",
        &[],
    ),
    ("get", "/", "The web console (its files need no credentials).", &[]),
    ("get", "/console/", "The web console.", &[]),
    ("get", "/console/{file}", "One of the web console's files.", &[]),
    ("get", "/v1/session", "Who the caller is: kind (local, anonymous, user), admin, read and write patterns.", &[]),
    ("post", "/v1/session", "Browser login: {user, password} in, an HttpOnly SameSite=Strict session cookie out.", &[]),
    ("delete", "/v1/session", "Logout: ends the cookie's session.", &[]),
    (
        "get",
        "/events",
        "Compatibility: events of the compatibility topic, from/to inclusive.",
        &[&[("from", "First event id."), ("to", "Last event id.")]],
    ),
    ("head", "/events", "Compatibility: the ETag of the newest event.", &[]),
    ("put", "/events", "Compatibility: append {eventType, body, eventId?}.", &[]),
    ("post", "/events", "Compatibility: append {eventType, body, eventId?}.", &[]),
    ("get", "/events/{id}", "Compatibility: one event.", &[]),
    ("put", "/storage", "Compatibility: store content; {status, hash, url}.", &[]),
    ("post", "/storage", "Compatibility: store content; {status, hash, url}.", &[]),
    ("put", "/storage/", "Compatibility: store content; {status, hash, url}.", &[]),
    ("post", "/storage/", "Compatibility: store content; {status, hash, url}.", &[]),
    ("get", "/storage/{hash}", "Compatibility: content by hex hash.", &[]),
    ("delete", "/storage/{hash}", "Compatibility: delete content.", &[]),
    ("get", "/info", "Compatibility: version and store facts.", &[]),
];

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, groups) in ROUTES {
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|part| part.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        for (name, description) in groups.iter().flat_map(|group| group.iter()) {
            parameters.push(
                json!({ "name": name, "in": "query", "description": description, "schema": { "type": "string" } }),
            );
        }
        let operation = json!({
            "summary": summary,
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters,
            "responses": {
                "default": {
                    "description": "Success, or an error {\"error\":{\"code\",\"message\"}} (compatibility routes: {\"status\":\"error\",\"errorMessage\"})."
                }
            }
        });
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert((*method).to_owned(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "cairn", "version": env!("CARGO_PKG_VERSION"), "description": "An event store: append, read in order, follow live." },
        "components": { "securitySchemes": { "basic": { "type": "http", "scheme": "basic" }, "bearer": { "type": "http", "scheme": "bearer" } } },
        "security": [ { "basic": [] }, { "bearer": [] } ],
        "paths": paths,
    })
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> Response<Body> {
    json_response(StatusCode::OK, serde_json::to_vec(&document()).unwrap_or_default(), None)
}
