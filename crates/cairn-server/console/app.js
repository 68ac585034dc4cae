// The cairn web console: plain modules, no build step, no dependencies.
// Every figure comes from the same /v1 API any client uses, with the
// caller's own rights. Data is put in the page only as text (never as
// markup), so an event's payload cannot run as script.

const PAGE = 50;
const TOPICS_PAGE = 100;
const TAIL_ROWS_MAX = 500;
const POLL_MS = 2000;

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
let me = null;
let cleanup = [];
// Bumped by each navigation: a view that finds it changed after an await
// was left meanwhile and stops.
let generation = 0;

// ---- small helpers -------------------------------------------------------

/** An element: h("a", {href: "#"}, "text", child). Children are text or nodes. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat());
}

function say(text, kind = "") {
  statusLine.className = kind;
  statusLine.textContent = text;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The browser session's check: the half of the session this origin keeps
// (the other half is the HttpOnly cookie, which browsers would also hand to
// other ports of this host). Sent with every request.
const CHECK_KEY = "cairn.session-check";
function sessionCheck() {
  try {
    return localStorage.getItem(CHECK_KEY) || "";
  } catch {
    return "";
  }
}
function keepCheck(check) {
  try {
    if (check) localStorage.setItem(CHECK_KEY, check);
    else localStorage.removeItem(CHECK_KEY);
  } catch {}
}

/** Calls the API; JSON in and out; throws ApiError with the server's message. */
async function api(path, { method = "GET", body, raw = false } = {}) {
  const options = { method, credentials: "same-origin", headers: { "cairn-session-check": sessionCheck() } };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    let code = "http_" + response.status;
    let message = response.statusText;
    try {
      const error = (await response.json()).error;
      code = error.code;
      message = error.message;
    } catch {}
    if (response.status === 401 && path !== "/v1/session") {
      me = null;
      route();
    }
    throw new ApiError(response.status, code, message);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** A read's events (NDJSON). */
async function events(path) {
  const response = await api(path, { raw: true });
  const text = await response.text();
  const items = text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  // A read that fails part-way ends with an error line.
  const failure = items.find((item) => item.error);
  if (failure) throw new ApiError(500, failure.error.code, failure.error.message);
  return items;
}

const enc = encodeURIComponent;

/** The millisecond a SCRU128 id was made (its top 48 bits). */
function idTime(id) {
  let value = 0n;
  for (const c of id) value = value * 36n + BigInt(parseInt(c, 36));
  return Number(value >> 80n);
}

/** The largest SCRU128 id before a millisecond ("after" it reads from that millisecond on). */
function idBefore(ms) {
  // Ids hold 48 bits of milliseconds (until the year 10889).
  let value = BigInt(Math.min(Math.max(0, Math.floor(ms)), 2 ** 48 - 1)) << 80n;
  if (value > 0n) value -= 1n;
  let text = "";
  for (let i = 0; i < 25; i++) {
    text = (value % 36n).toString(36) + text;
    value /= 36n;
  }
  return text;
}

function when(ms) {
  if (!ms) return "";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

function ago(ms) {
  const seconds = Math.max(0, (Date.now() - ms) / 1000);
  if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} days ago`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

function rate(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

/** Sends the console to its login if the session has ended. */
function recheck() {
  api("/v1/session").catch((error) => {
    if (error.status === 401) {
      me = null;
      route();
    }
  });
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  cleanup.push(() => clearInterval(timer));
}

/** Whether the view begun at generation `mine` is still the one shown. */
function current(mine) {
  return mine === generation;
}

function hashParams() {
  const hash = location.hash.slice(1);
  const [path, query = ""] = hash.split("?");
  const decode = (part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  };
  return { parts: path.split("/").filter(Boolean).map(decode), query: new URLSearchParams(query) };
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function failed(error) {
  say(error.message, "error");
}

function table(headings, rows, label) {
  return h(
    "table",
    { "aria-label": label },
    h("thead", {}, h("tr", {}, headings.map(([text, cls]) => h("th", { scope: "col", class: cls }, text)))),
    h("tbody", {}, rows),
  );
}

// ---- login ---------------------------------------------------------------

function loginView(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const user = h("input", { id: "login-user", name: "user", autocomplete: "username", required: true });
  const password = h("input", {
    id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true,
  });
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "login", "aria-label": "Log in" },
    h("h1", {}, "Log in to cairn"),
    h("label", { for: "login-user" }, "User", user),
    h("label", { for: "login-password" }, "Password", password),
    h("button", { type: "submit", class: "primary" }, "Log in"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      me = await api("/v1/session", { method: "POST", body: { user: user.value, password: password.value } });
      keepCheck(me.session_check);
      if (!location.hash || location.hash === "#/login") location.hash = "#/topics";
      route();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  show(form);
  user.focus();
}

async function logout() {
  try {
    await api("/v1/session", { method: "DELETE" });
  } catch {}
  keepCheck("");
  me = null;
  route();
}

// ---- topics --------------------------------------------------------------

function topicsView(query) {
  const filter = query.get("filter") || "";
  const after = query.get("after") || "";
  const input = h("input", { id: "topic-filter", type: "search", value: filter, placeholder: "orders.* or text" });
  const form = h(
    "form",
    { class: "bar", role: "search", "aria-label": "Filter topics" },
    h("label", { for: "topic-filter" }, "Filter (a pattern like orders.* or orders.>, or part of a name)", input),
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#/topics?filter=${enc(input.value.trim())}`);
  });
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  show(
    h("h1", {}, "Topics"),
    form,
    h(
      "table",
      { "aria-label": "Topics" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Topic"),
          h("th", { scope: "col", class: "num" }, "Events"),
          h("th", { scope: "col", class: "num" }, "First seq"),
          h("th", { scope: "col", class: "num" }, "Last seq"),
          h("th", { scope: "col" }, "Last activity"),
          h("th", { scope: "col", class: "num" }, "Rate (events/s)"),
        ),
      ),
      body,
    ),
    pager,
  );
  const params = new URLSearchParams({ limit: String(TOPICS_PAGE + 1) });
  if (filter) {
    if (/[*>]/.test(filter)) params.set("pattern", filter);
    else params.set("contains", filter);
  }
  if (after) params.set("after", after);
  const previous = new Map();
  let lastAt = 0;
  async function load() {
    try {
      const topics = await api(`/v1/topics?${params}`);
      const now = performance.now();
      const more = topics.length > TOPICS_PAGE;
      const page = topics.slice(0, TOPICS_PAGE);
      body.replaceChildren(
        ...page.map((info) => {
          const before = previous.get(info.topic);
          const speed = before !== undefined && lastAt ? ((info.last_seq - before) * 1000) / (now - lastAt) : null;
          previous.set(info.topic, info.last_seq);
          const at = idTime(info.last_id);
          return h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/topic/${enc(info.topic)}` }, info.topic)),
            h("td", { class: "num" }, info.count),
            h("td", { class: "num" }, info.first_seq ?? ""),
            h("td", { class: "num" }, info.last_seq),
            h("td", { title: when(at) }, ago(at)),
            h("td", { class: "num" }, speed === null ? "" : rate(speed)),
          );
        }),
      );
      if (!page.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No topics to show.")));
      lastAt = now;
      const base = `#/topics?filter=${enc(filter)}`;
      pager.replaceChildren(
        after ? h("a", { href: base }, "First page") : "",
        more ? h("a", { href: `${base}&after=${enc(page[page.length - 1].topic)}` }, "Next page") : "",
        h("span", { class: "muted" }, `${page.length} shown${after ? ` after ${after}` : ""}`),
      );
      say("");
    } catch (error) {
      failed(error);
    }
  }
  load();
  every(POLL_MS, load);
}

// ---- a topic's events ----------------------------------------------------

function eventRow(event, withTopic = false) {
  const at = idTime(event.id);
  return h(
    "tr",
    {},
    withTopic ? h("td", {}, h("a", { href: `#/topic/${enc(event.topic)}?from=${event.seq}` }, event.topic)) : null,
    h("td", { class: "num" }, event.seq),
    h("td", {}, h("a", { href: `#/event/${event.id}`, class: "mono" }, event.id)),
    h("td", {}, when(at)),
    h("td", {}, event.type || ""),
    h("td", {}, event.user || ""),
    h("td", { class: "num" }, event.size ?? ""),
  );
}

const EVENT_HEADINGS = [["Seq", "num"], ["Id"], ["Time (UTC)"], ["Type"], ["User"], ["Bytes", "num"]];
const TAIL_HEADINGS = [["Topic"], ...EVENT_HEADINGS];

async function topicView(topic, query) {
  const mine = generation;
  const path = `/v1/topics/${enc(topic)}`;
  let head;
  try {
    head = await api(path);
  } catch (error) {
    if (!current(mine)) return;
    show(h("h1", {}, topic), h("p", { class: "error" }, error.message));
    return;
  }
  const last = head.last_seq;
  const first = head.first_seq ?? last;
  let from = query.has("from") ? Number(query.get("from")) : Math.max(first, last - PAGE + 1);
  if (!Number.isFinite(from) || from < 0) from = first;
  const rows = await events(`${path}/events?from_seq=${from}&limit=${PAGE}`).catch((error) => {
    failed(error);
    return [];
  });
  if (!current(mine)) return;
  const link = (seq) => `#/topic/${enc(topic)}?from=${Math.max(0, seq)}`;
  const prev = from > first ? link(Math.max(first, from - PAGE)) : null;
  const next = rows.length && rows[rows.length - 1].seq < last ? link(rows[rows.length - 1].seq + 1) : null;
  const jump = h("input", { id: "jump", placeholder: "seq, event id or time (2026-12-06 10:00)" });
  const jumpForm = h(
    "form",
    { class: "bar", "aria-label": "Jump" },
    h("label", { for: "jump" }, "Jump to a seq, an id or a time", jump),
    h("button", { type: "submit" }, "Go"),
  );
  jumpForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      go(link(await resolveJump(topic, jump.value.trim())));
    } catch (error) {
      failed(error);
    }
  });
  const nav = (label, href, key) =>
    href ? h("a", { href, "aria-keyshortcuts": key }, label) : h("span", { class: "muted" }, label);
  const pager = () =>
    h(
      "div",
      { class: "pager" },
      nav("First", from > first ? link(first) : null),
      nav("Previous (p)", prev, "p"),
      nav("Next (n)", next, "n"),
      nav("Last", next ? link(Math.max(first, last - PAGE + 1)) : null),
      h("span", { class: "muted" }, rows.length ? `seq ${rows[0].seq} to ${rows[rows.length - 1].seq} of ${first} to ${last}` : "no events here"),
    );
  show(
    h("h1", {}, "Topic ", h("code", {}, topic)),
    h(
      "div",
      { class: "stats" },
      h("div", {}, h("span", { class: "muted" }, "Events"), h("b", {}, head.count)),
      h("div", {}, h("span", { class: "muted" }, "First seq"), h("b", {}, head.first_seq ?? "")),
      h("div", {}, h("span", { class: "muted" }, "Last seq"), h("b", {}, last)),
      h("div", {}, h("span", { class: "muted" }, "Last event"), h("b", {}, ago(idTime(head.last_id)))),
      h("div", {}, h("a", { href: `#/tail?pattern=${enc(topic)}` }, "Tail live")),
    ),
    jumpForm,
    pager(),
    table(EVENT_HEADINGS, rows.map((event) => eventRow(event)), `Events of ${topic}`),
    pager(),
  );
  const keys = (event) => {
    if (event.target instanceof HTMLInputElement) return;
    if (event.key === "n" && next) go(next);
    if (event.key === "p" && prev) go(prev);
  };
  document.addEventListener("keydown", keys);
  cleanup.push(() => document.removeEventListener("keydown", keys));
}

/** The seq a jump names: a number, an event id, or a time. */
async function resolveJump(topic, text) {
  if (/^\d+$/.test(text)) return Number(text);
  if (/^[0-9a-z]{25}$/i.test(text)) {
    const event = await api(`/v1/events/${text.toLowerCase()}`);
    if (event.topic !== topic) throw new Error(`event ${text} is in topic ${event.topic}`);
    return event.seq;
  }
  const ms = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text.replace(" ", "T") + "Z");
  if (Number.isNaN(ms)) throw new Error(`${text} is not a seq, an event id or a time`);
  const found = await events(`/v1/events?topic=${enc(topic)}&after=${idBefore(Math.max(0, ms))}&limit=1`);
  if (!found.length) throw new Error(`no event of ${topic} at or after ${when(ms)}`);
  return found[0].seq;
}

// ---- one event -----------------------------------------------------------

function bytesOf(event) {
  if (event.content !== undefined) return new TextEncoder().encode(event.content);
  if (event.content_base64 !== undefined) return Uint8Array.from(atob(event.content_base64), (c) => c.charCodeAt(0));
  return null;
}

function imageType(event, bytes) {
  const declared = [event.type, event.meta && event.meta.content_type].find(
    (kind) => typeof kind === "string" && /^image\/(png|jpeg|gif|webp|bmp|avif)$/.test(kind),
  );
  if (declared) return declared;
  const starts = (...magic) => magic.every((byte, i) => bytes[i] === byte);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x47, 0x49, 0x46, 0x38)) return "image/gif";
  if (starts(0x52, 0x49, 0x46, 0x46) && bytes[8] === 0x57 && bytes[9] === 0x45) return "image/webp";
  return null;
}

function hexDump(bytes, max = 4096) {
  const lines = [];
  for (let offset = 0; offset < Math.min(bytes.length, max); offset += 16) {
    const row = bytes.subarray(offset, offset + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
  }
  if (bytes.length > max) lines.push(`… ${bytes.length - max} more bytes (download to see them)`);
  return lines.join("\n");
}

async function eventView(id) {
  const mine = generation;
  let event;
  try {
    event = await api(`/v1/events/${enc(id)}?content=true`);
    if (!current(mine)) return;
  } catch (error) {
    if (!current(mine)) return;
    show(h("h1", {}, "Event ", h("code", {}, id)), h("p", { class: "error" }, error.message));
    return;
  }
  const at = idTime(event.id);
  const field = (name, value) => [h("dt", {}, name), h("dd", {}, value)];
  const payload = [];
  const bytes = bytesOf(event);
  if (bytes === null) {
    payload.push(h("p", { class: "muted" }, "No payload."));
  } else {
    const image = imageType(event, bytes);
    const blob = new Blob([bytes], { type: image || "application/octet-stream" });
    const url = URL.createObjectURL(blob);
    cleanup.push(() => URL.revokeObjectURL(url));
    if (image) payload.push(h("img", { class: "preview", src: url, alt: `Image payload of event ${event.id}` }));
    else if (event.content !== undefined) {
      let shown = event.content;
      let kind = "Text";
      try {
        shown = JSON.stringify(JSON.parse(event.content), null, 2);
        kind = "JSON";
      } catch {}
      payload.push(h("p", { class: "muted" }, kind), h("pre", { id: "payload", tabindex: 0 }, shown));
    } else payload.push(h("p", { class: "muted" }, "Binary (hex)"), h("pre", { id: "payload", tabindex: 0 }, hexDump(bytes)));
    payload.push(h("p", {}, h("a", { href: url, download: `${event.id}.bin` }, `Download ${bytes.length} bytes`)));
  }
  show(
    h("h1", {}, "Event ", h("code", {}, event.id)),
    h(
      "dl",
      { class: "fields" },
      field("Id", h("code", {}, event.id)),
      field("Time (UTC)", `${when(at)} (${ago(at)})`),
      field("Topic", h("a", { href: `#/topic/${enc(event.topic)}?from=${event.seq}` }, event.topic)),
      field("Seq", event.seq),
      field("Type", event.type || "none"),
      field("User", event.user || "none"),
      field("TTL", event.ttl || "forever"),
      field("Hash", event.hash ? h("code", {}, event.hash) : "none"),
      field("Size", event.size !== undefined ? `${event.size} bytes` : "none"),
      field("Meta", event.meta ? h("pre", {}, JSON.stringify(event.meta, null, 2)) : "none"),
    ),
    h("h2", {}, "Payload"),
    payload,
  );
}

// ---- live tail -----------------------------------------------------------

function tailView(query) {
  const pattern = query.get("pattern") || ">";
  const input = h("input", { id: "tail-pattern", value: pattern });
  const form = h(
    "form",
    { class: "bar", "aria-label": "Tail a pattern" },
    h("label", { for: "tail-pattern" }, "Topic or pattern", input),
    h("button", { type: "submit" }, "Tail"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#/tail?pattern=${enc(input.value.trim() || ">")}`);
  });
  const pause = h("button", { type: "button", id: "tail-pause" }, "Pause");
  const clear = h("button", { type: "button" }, "Clear");
  const state = h("span", { id: "tail-state", class: "muted", "aria-live": "polite" }, "connecting");
  const speed = h("span", { id: "tail-rate", class: "muted" }, "");
  const body = h("tbody", { id: "tail-rows" });
  show(
    h("h1", {}, "Live tail"),
    form,
    h("div", { class: "bar" }, pause, clear, state, speed),
    table(TAIL_HEADINGS, [], `Live events of ${pattern}`),
  );
  main.querySelector("table").replaceChild(body, main.querySelector("tbody"));
  let source = null;
  let lastId = null;
  let paused = false;
  let live = false;
  const arrivals = [];
  function add(row) {
    body.prepend(row);
    while (body.childElementCount > TAIL_ROWS_MAX) body.lastElementChild.remove();
  }
  function open() {
    const params = new URLSearchParams({ topic: pattern, follow: "true", threshold: "true" });
    if (sessionCheck()) params.set("session_check", sessionCheck());
    if (lastId) params.set("after", lastId);
    else params.set("last", "20");
    source = new EventSource(`/v1/events?${params}`);
    state.textContent = lastId ? "resuming" : "history";
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      lastId = event.id;
      if (live) arrivals.push(performance.now());
      add(eventRow(event, true));
    };
    source.addEventListener("cairn.threshold", () => {
      live = true;
      state.textContent = "live";
      add(h("tr", { class: "threshold" }, h("td", { colspan: 7 }, `live events above (since ${when(Date.now())}), history below`)));
    });
    source.addEventListener("error", (message) => {
      if (message.data) {
        // The server ended the stream with a reason (a refused read, a
        // session that ended): say it, and do not reconnect.
        let reason = message.data;
        try {
          reason = JSON.parse(message.data).error.message;
        } catch {}
        close();
        state.textContent = `ended: ${reason}`;
        recheck();
      } else if (source && source.readyState === EventSource.CONNECTING) state.textContent = "reconnecting";
      else if (!state.textContent.startsWith("ended")) {
        state.textContent = "closed";
        recheck();
      }
    });
  }
  function close() {
    if (source) source.close();
    source = null;
  }
  pause.addEventListener("click", async () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      // Nothing seen yet: resume after what the store held at the pause.
      // Asked before the stream closes, so an event committed meanwhile
      // either arrives on the stream or comes after that id.
      if (!lastId) {
        pause.disabled = true;
        try {
          const info = await api("/v1/info");
          lastId = lastId || info.last_id;
        } catch (error) {
          failed(error);
        }
        pause.disabled = false;
      }
      close();
      live = false;
      state.textContent = "paused";
    } else open();
  });
  clear.addEventListener("click", () => body.replaceChildren());
  open();
  cleanup.push(close);
  every(1000, () => {
    const now = performance.now();
    while (arrivals.length && arrivals[0] < now - 5000) arrivals.shift();
    speed.textContent = live ? `${rate(arrivals.length / 5)} events/s` : "";
  });
}

// ---- consumers -----------------------------------------------------------

async function consumersView() {
  const groupsBody = h("tbody", { id: "groups" });
  const cursorsBody = h("tbody", { id: "cursors" });
  show(
    h("h1", {}, "Consumers"),
    h("h2", {}, "Consumer groups"),
    table(
      [["Topic"], ["Group"], ["Consumers", "num"], ["Behind (not acknowledged)", "num"], ["Pending", "num"], ["Oldest pending"], ["Last delivered"]],
      [],
      "Consumer groups",
    ),
    h("h2", {}, "Durable consumers"),
    table([["Name"], ["Owner"], ["Acknowledged up to"], ["At"]], [], "Durable consumers"),
    positionForm(),
  );
  const [groupsTable, cursorsTable] = main.querySelectorAll("table");
  groupsTable.replaceChild(groupsBody, groupsTable.querySelector("tbody"));
  cursorsTable.replaceChild(cursorsBody, cursorsTable.querySelector("tbody"));
  async function load() {
    try {
      const [groups, cursors] = await Promise.all([api("/v1/groups"), api("/v1/consumers")]);
      groupsBody.replaceChildren(
        ...groups.map((group) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/topic/${enc(group.topic)}` }, group.topic)),
            h("td", {}, h("a", { href: `#/group/${enc(group.topic)}/${enc(group.group)}` }, group.group)),
            h("td", { class: "num" }, group.consumers),
            h("td", { class: "num" }, group.lag + group.pending),
            h("td", { class: "num" }, group.pending),
            h("td", {}, duration(group.oldest_pending_ms)),
            h("td", { class: "mono" }, group.last_delivered),
          ),
        ),
      );
      if (!groups.length) groupsBody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No groups.")));
      cursorsBody.replaceChildren(
        ...cursors.map((cursor) =>
          h(
            "tr",
            {},
            h("td", {}, cursor.name),
            h("td", {}, cursor.owner),
            h("td", {}, cursor.acked ? h("a", { href: `#/event/${cursor.acked}`, class: "mono" }, cursor.acked) : "nothing"),
            h("td", {}, cursor.acked ? ago(idTime(cursor.acked)) : ""),
          ),
        ),
      );
      if (!cursors.length) cursorsBody.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No durable consumers.")));
      say("");
    } catch (error) {
      failed(error);
    }
  }
  const mine = generation;
  await load();
  if (current(mine)) every(POLL_MS, load);
}

/** Moves a durable consumer to an event id (its new acknowledged position). */
function positionForm() {
  const name = h("input", { id: "cursor-name", placeholder: "consumer name" });
  const owner = h("input", { id: "cursor-owner", placeholder: "user:<name> (admins: another's)" });
  const id = h("input", { id: "cursor-id", placeholder: "event id" });
  const form = h(
    "form",
    { class: "bar", "aria-label": "Set a durable consumer's position" },
    h("label", { for: "cursor-name" }, "Consumer", name),
    me && (me.admin || me.kind === "local") ? h("label", { for: "cursor-owner" }, "Owner", owner) : null,
    h("label", { for: "cursor-id" }, "Acknowledged up to (event id)", id),
    h("button", { type: "submit" }, "Set position"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = owner.value.trim() ? `?owner=${enc(owner.value.trim())}` : "";
    try {
      await api(`/v1/consumers/${enc(name.value.trim())}${query}`, { method: "PUT", body: { id: id.value.trim() } });
      say(`${name.value.trim()} now at ${id.value.trim()}`, "ok");
    } catch (error) {
      failed(error);
    }
  });
  return form;
}

async function groupView(topic, group) {
  const path = `/v1/topics/${enc(topic)}/groups/${enc(group)}`;
  const stats = h("div", { class: "stats" });
  const members = h("tbody", { id: "members" });
  const pending = h("tbody", { id: "pending" });
  const claimTo = h("input", { id: "claim-to", placeholder: "consumer" });
  const position = h("input", { id: "position", placeholder: "<ms>-<seq> or $" });
  const positionForm = h(
    "form",
    { class: "bar", "aria-label": "Set position" },
    h("label", { for: "position" }, "Set the last delivered entry", position),
    h("button", { type: "submit" }, "Set position"),
  );
  positionForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    await act(() => api(`${path}/position`, { method: "PUT", body: { id: position.value.trim() } }), "Position set");
  });
  show(
    h("h1", {}, "Group ", h("code", {}, group), " on ", h("a", { href: `#/topic/${enc(topic)}` }, topic)),
    stats,
    h("h2", {}, "Consumers"),
    table([["Consumer"], ["Pending", "num"], ["Idle"], ["Last got entries"]], [], "Consumers of the group"),
    h("h2", {}, "Pending entries"),
    h("div", { class: "bar" }, h("label", { for: "claim-to" }, "Claim selected entries for", claimTo)),
    table([["Entry"], ["Consumer"], ["Idle"], ["Deliveries", "num"], ["Actions"]], [], "Pending entries"),
    h("h2", {}, "Position"),
    positionForm,
  );
  const [membersTable, pendingTable] = main.querySelectorAll("table");
  membersTable.replaceChild(members, membersTable.querySelector("tbody"));
  pendingTable.replaceChild(pending, pendingTable.querySelector("tbody"));
  async function act(call, done) {
    try {
      await call();
      say(done, "ok");
      await load();
    } catch (error) {
      failed(error);
    }
  }
  async function load() {
    try {
      const info = await api(path);
      const stat = (label, value, id) => h("div", {}, h("span", { class: "muted" }, label), h("b", { id }, value));
      stats.replaceChildren(
        stat("Behind (not yet acknowledged)", info.lag + info.pending, "group-behind"),
        stat("Not yet delivered", info.lag, "group-lag"),
        stat("Pending (delivered, not acknowledged)", info.pending, "group-pending"),
        stat("Oldest pending", duration(info.oldest_pending_ms) || "none"),
        stat("Last delivered", info.last_delivered),
      );
      members.replaceChildren(
        ...info.members.map((member) =>
          h(
            "tr",
            {},
            h("td", {}, member.name),
            h("td", { class: "num" }, member.pending),
            h("td", {}, duration(member.idle_ms)),
            h("td", {}, member.inactive_ms === null ? "never" : `${duration(member.inactive_ms)} ago`),
          ),
        ),
      );
      pending.replaceChildren(
        ...info.pending_entries.map((row) =>
          h(
            "tr",
            {},
            h("td", { class: "mono" }, row.id),
            h("td", {}, row.consumer),
            h("td", {}, duration(row.idle_ms)),
            h("td", { class: "num" }, row.deliveries),
            h(
              "td",
              {},
              canWrite(topic)
                ? [
                    h("button", {
                      type: "button",
                      "aria-label": `Acknowledge ${row.id}`,
                      onclick: () => act(() => api(`${path}/ack`, { method: "POST", body: { ids: [row.id] } }), `Acknowledged ${row.id}`),
                    }, "Ack"),
                    " ",
                    h("button", {
                      type: "button",
                      "aria-label": `Claim ${row.id}`,
                      onclick: () => {
                        const consumer = claimTo.value.trim();
                        if (!consumer) return say("Name the consumer to claim for first.", "error");
                        act(() => api(`${path}/claim`, { method: "POST", body: { consumer, ids: [row.id] } }), `Claimed ${row.id} for ${consumer}`);
                      },
                    }, "Claim"),
                  ]
                : h("span", { class: "muted" }, "read only"),
            ),
          ),
        ),
      );
      if (!info.pending_entries.length) pending.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "Nothing pending.")));
    } catch (error) {
      failed(error);
    }
  }
  const mine = generation;
  await load();
  if (current(mine)) every(POLL_MS, load);
}

/** Whether the caller may write a topic (to offer actions; the server decides). */
function canWrite(topic) {
  if (!me) return false;
  return me.write.some((pattern) => matches(pattern, topic));
}

/** A cairn topic pattern (levels split by dots; * one level, > the rest). */
function matches(pattern, topic) {
  const want = pattern.split(".");
  const have = topic.split(".");
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ">") return have.length > i;
    if (i >= have.length) return false;
    if (want[i] !== "*" && want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

// ---- server --------------------------------------------------------------

function metricValues(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const [name, value] = line.split(/\s+/);
    if (!name.includes("{")) values[name] = Number(value);
  }
  return values;
}

function serverView() {
  const facts = h("dl", { class: "fields", id: "server-info" });
  const live = h("div", { class: "stats", id: "server-rates" });
  show(h("h1", {}, "Server"), facts, h("h2", {}, "Now"), live);
  let before = null;
  async function load() {
    try {
      const info = await api("/v1/info");
      const field = (name, value) => (value === undefined ? [] : [h("dt", {}, name), h("dd", {}, value)]);
      facts.replaceChildren(
        ...field("Version", `${info.name} ${info.version}`),
        ...field("Up for", duration(info.uptime_seconds * 1000)),
        ...field("Last event", info.last_id),
        ...field("Events appended since start", info.events_appended_since_start),
        ...field("Log on disk", info.log_bytes !== undefined ? `${(info.log_bytes / 1048576).toFixed(1)} MiB` : undefined),
        ...field("Content on disk", info.content_bytes !== undefined ? `${(info.content_bytes / 1048576).toFixed(1)} MiB` : undefined),
      );
      let metrics;
      try {
        metrics = metricValues(await (await api("/metrics", { raw: true })).text());
      } catch (error) {
        live.replaceChildren(h("span", { class: "muted" }, `Metrics: ${error.message}`));
        return;
      }
      const now = performance.now();
      const stat = (label, value) => h("div", {}, h("span", { class: "muted" }, label), h("b", {}, value));
      let appendRate = "";
      let fsync = "";
      if (before) {
        const seconds = (now - before.at) / 1000;
        appendRate = rate((metrics.cairn_appended_events_total - before.m.cairn_appended_events_total) / seconds);
        const syncs = metrics.cairn_fsyncs_total - before.m.cairn_fsyncs_total;
        const spent = metrics.cairn_fsync_seconds_total - before.m.cairn_fsync_seconds_total;
        fsync = syncs > 0 ? `${((spent / syncs) * 1000).toFixed(2)} ms` : "idle";
      }
      live.replaceChildren(
        stat("Events appended/s", appendRate),
        stat("fsync latency (mean)", fsync),
        stat("fsync latency (max)", `${((metrics.cairn_fsync_seconds_max || 0) * 1000).toFixed(2)} ms`),
        stat("Connections", metrics.cairn_open_connections ?? ""),
        stat("Open streams", metrics.cairn_open_streams ?? ""),
        stat("Streams behind", metrics.cairn_streams_behind ?? ""),
      );
      before = { at: now, m: metrics };
      say("");
    } catch (error) {
      failed(error);
    }
  }
  load();
  every(POLL_MS, load);
}

// ---- routing -------------------------------------------------------------

async function route() {
  generation += 1;
  for (const done of cleanup.splice(0)) done();
  if (!me) {
    try {
      me = await api("/v1/session");
    } catch (error) {
      if (error.status === 401) return loginView();
      show(h("p", { class: "error" }, error.message));
      return;
    }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = me.kind !== "user";
  document.getElementById("who").textContent =
    me.kind === "user" ? `${me.user}${me.admin ? " (admin)" : ""}` : me.kind === "local" ? "socket (trusted)" : "anonymous";
  const { parts, query } = hashParams();
  const view = parts[0] || "topics";
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.view === view || (link.dataset.view === "consumers" && view === "group") || (link.dataset.view === "topics" && (view === "topic" || view === "event"));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  say("");
  switch (view) {
    case "topic":
      return topicView(parts[1] || "", query);
    case "event":
      return eventView(parts[1] || "");
    case "tail":
      return tailView(query);
    case "consumers":
      return consumersView();
    case "group":
      return groupView(parts[1] || "", parts[2] || "");
    case "server":
      return serverView();
    default:
      return topicsView(query);
  }
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
