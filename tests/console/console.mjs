// The web console in a real browser (Debian's Chromium, driven by
// playwright-core) against a real `cairn serve`, started and seeded by
// crates/cairn-cli/tests/it/console.rs, which passes:
//   URL          the server's http://127.0.0.1:<port>
//   CAIRN        the cairn binary; STORE its store (the CLI appends through
//                the server's socket)
//   SECRET_ID    an event id on secret.plans, which bob may not read
//   IMAGE_ID     an event whose payload is a PNG
//   CORS_PORT    a port for a page on another origin, which the server
//                names with --cors-origin
//   SHOTS        where the screenshots go
// Prints each step, then "done".
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";

const { URL: base, CAIRN, STORE, SECRET_ID, IMAGE_ID, CORS_PORT, SHOTS } = process.env;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const step = (text) => console.log(`step: ${text}`);
// The page being driven, to show on a failure.
let current = null;

try {
  // ---- alice: reads and writes orders.> -------------------------------
  const alice = await browser.newContext({ colorScheme: "light" });
  const page = await alice.newPage();
  current = page;
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));

  step("the console asks for a login, and a wrong password is refused");
  await page.goto(`${base}/`);
  await page.getByLabel("User").fill("alice");
  await page.getByLabel("Password").fill("wrong");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "wrong user name or password" }).waitFor();
  await page.screenshot({ path: `${SHOTS}/login.png` });

  step("log in");
  await page.getByLabel("Password").fill("alicepw");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Topics" }).waitFor();
  assert.equal(await page.locator("#who").textContent(), "alice");
  const cookies = await alice.cookies();
  const session = cookies.find((cookie) => cookie.name === "cairn_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");

  step("topics: alice sees hers only, paged, and a filter narrows them");
  const topicNames = () => page.locator("table[aria-label=Topics] tbody td:first-child").allTextContents();
  await page.locator("table[aria-label=Topics] tbody a").first().waitFor();
  let names = await topicNames();
  assert.equal(names.length, 100, "a page of 100 of alice's 2,004 topics");
  assert.deepEqual(names.slice(0, 3), ["orders.eu", "orders.images", "orders.many.00000"]);
  await page.getByRole("link", { name: "Next page" }).click();
  await page.waitForFunction(() => document.querySelector("table[aria-label=Topics] tbody td")?.textContent === "orders.many.00098");
  await page.getByRole("searchbox").fill("orders.u");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForFunction(() =>
    [...document.querySelectorAll("table[aria-label=Topics] tbody td:first-child")].map((td) => td.textContent).join() === "orders.us",
  );
  // A pattern: one level under orders.
  await page.getByRole("searchbox").fill("orders.*");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForFunction(() => location.hash.includes("filter=orders.*"));
  await page.waitForFunction(() =>
    [...document.querySelectorAll("table[aria-label=Topics] tbody td:first-child")].map((td) => td.textContent).join() ===
      "orders.eu,orders.images,orders.us",
  );
  await page.screenshot({ path: `${SHOTS}/topics.png` });

  step("a topic's events, paged through all 10,000 by keyboard");
  await page.getByRole("link", { name: "orders.eu" }).click();
  await page.getByRole("heading", { name: /Topic orders.eu/ }).waitFor();
  const seqs = () => page.locator("table[aria-label='Events of orders.eu'] tbody td:first-child").allTextContents();
  // The newest page first.
  let shown = (await seqs()).map(Number);
  assert.equal(shown[shown.length - 1], 9999);
  await page.getByRole("link", { name: "First" }).first().click();
  await page.waitForFunction(() => location.hash.endsWith("from=0"));
  const firstRow = (want) =>
    page.waitForFunction(
      (seq) => document.querySelector("table[aria-label='Events of orders.eu'] tbody td")?.textContent === seq,
      String(want),
    );
  const seen = [];
  for (;;) {
    // The page that starts where the last one ended.
    await firstRow(seen.length);
    shown = (await seqs()).map(Number);
    seen.push(...shown);
    if (seen.length >= 10000) break;
    await page.keyboard.press("n");
  }
  assert.equal(seen.length, 10000);
  assert.deepEqual(seen, Array.from({ length: 10000 }, (_, i) => i));
  // And back one page.
  await page.keyboard.press("p");
  await firstRow(9900);

  step("jump to a seq and to a time");
  await page.getByLabel(/Jump to/).fill("1234");
  await page.getByRole("button", { name: "Go" }).click();
  await firstRow(1234);
  await page.getByLabel(/Jump to/).fill("2000-01-01 00:00");
  await page.getByRole("button", { name: "Go" }).click();
  await firstRow(0);
  await page.screenshot({ path: `${SHOTS}/topic.png` });

  step("open an event: pretty JSON with its fields");
  const firstId = await page.locator("table[aria-label='Events of orders.eu'] tbody a").first().textContent();
  await page.getByRole("link", { name: firstId }).click();
  await page.getByRole("heading", { name: `Event ${firstId}` }).waitFor();
  const payload = await page.locator("#payload").textContent();
  assert.deepEqual(JSON.parse(payload), { n: 0, item: "widget" });
  assert.ok(payload.includes('\n  "n": 0'), "pretty printed");
  assert.match(await page.locator("dl.fields").textContent(), /Seq0.*Typeorder\.placed/s);
  await page.screenshot({ path: `${SHOTS}/event.png` });

  step("an image payload is previewed");
  await page.goto(`${base}/#/event/${IMAGE_ID}`);
  const image = page.locator("img.preview");
  await image.waitFor();
  await page.waitForFunction(() => document.querySelector("img.preview").naturalWidth === 2);
  await page.screenshot({ path: `${SHOTS}/event-image.png` });

  step("live tail: an event appended from the CLI arrives within a second");
  await page.goto(`${base}/#/tail?pattern=orders.>`);
  await page.locator("#tail-state").filter({ hasText: "live" }).waitFor();
  assert.equal(await page.locator("tr.threshold").count(), 1, "the history/live threshold is shown");
  const appended = JSON.parse(
    execFileSync(CAIRN, ["--store", STORE, "append", "orders.us", "--type", "order.live"], { input: '{"live":true}' }),
  );
  const sent = Date.now();
  await page.getByRole("link", { name: appended.id }).waitFor({ timeout: 5000 });
  const latency = Date.now() - sent;
  step(`  arrived ${latency} ms after the CLI returned`);
  // Typically well under a second; the bound only catches a tail that
  // polls instead of following (the machine running the tests is shared).
  assert.ok(latency < 3000, `arrived after ${latency} ms`);
  await page.screenshot({ path: `${SHOTS}/tail.png` });
  // Paused, nothing new is shown; resumed, what came meanwhile arrives.
  await page.getByRole("button", { name: "Pause" }).click();
  await page.locator("#tail-state").filter({ hasText: "paused" }).waitFor();
  const whilePaused = JSON.parse(execFileSync(CAIRN, ["--store", STORE, "append", "orders.us"], { input: "{}" }));
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(await page.getByRole("link", { name: whilePaused.id }).count(), 0, "paused");
  await page.getByRole("button", { name: "Resume" }).click();
  await page.getByRole("link", { name: whilePaused.id }).waitFor({ timeout: 5000 });

  step("consumers: a group's lag, and an ack changes it");
  await page.getByRole("link", { name: "Consumers" }).click();
  await page.getByRole("link", { name: "workers" }).waitFor();
  await page.screenshot({ path: `${SHOTS}/consumers.png` });
  await page.getByRole("link", { name: "workers" }).click();
  await page.locator("#group-behind").waitFor();
  const behind = Number(await page.locator("#group-behind").textContent());
  const pending = Number(await page.locator("#group-pending").textContent());
  assert.equal(pending, 3);
  assert.ok(behind >= 10000 - 3 + 3, `behind ${behind}`);
  const ack = page.getByRole("button", { name: /^Acknowledge / }).first();
  await ack.click();
  await page.locator("#status").filter({ hasText: "Acknowledged" }).waitFor();
  await page.waitForFunction((before) => Number(document.querySelector("#group-behind").textContent) === before - 1, behind);
  assert.equal(Number(await page.locator("#group-pending").textContent()), 2);
  await page.getByLabel("Claim selected entries for").fill("w2");
  await page.getByRole("button", { name: /^Claim / }).first().click();
  await page.locator("#status").filter({ hasText: "for w2" }).waitFor();
  await page.locator("#pending td", { hasText: "w2" }).first().waitFor();
  await page.screenshot({ path: `${SHOTS}/group.png` });

  step("a durable consumer's position is set from the console");
  await page.getByRole("link", { name: "Consumers" }).click();
  await page.getByLabel("Consumer", { exact: true }).fill("billing");
  await page.getByLabel(/^Acknowledged up to/).fill(firstId);
  await page.getByRole("button", { name: "Set position" }).click();
  await page.locator("#status").filter({ hasText: `billing now at ${firstId}` }).waitFor();
  await page.locator("#cursors td", { hasText: "billing" }).waitFor();
  assert.equal(await page.locator("#cursors a").first().textContent(), firstId);

  step("server: the version for alice; store-wide figures are for admins");
  await page.getByRole("link", { name: "Server" }).click();
  await page.locator("#server-info dd").first().waitFor();
  await page.locator("#server-rates").filter({ hasText: "for admins" }).waitFor();

  step("dark mode follows the system");
  await page.emulateMedia({ colorScheme: "dark" });
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: "light" });
  const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(dark, light);

  step("log out: the console asks for a login again");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("heading", { name: "Log in to cairn" }).waitFor();
  assert.ok(!(await alice.cookies()).some((cookie) => cookie.name === "cairn_session" && cookie.value));
  assert.deepEqual(pageErrors, []);

  // ---- bob: reads public.> only --------------------------------------
  step("bob sees neither secret.plans nor its events");
  const bobContext = await browser.newContext();
  const bob = await bobContext.newPage();
  current = bob;
  await bob.goto(`${base}/`);
  await bob.getByLabel("User").fill("bob");
  await bob.getByLabel("Password").fill("bobpw");
  await bob.getByRole("button", { name: "Log in" }).click();
  await bob.locator("table[aria-label=Topics] tbody a").first().waitFor();
  names = await bob.locator("table[aria-label=Topics] tbody td:first-child").allTextContents();
  assert.deepEqual(names, ["public.news"]);
  await bob.goto(`${base}/#/topic/secret.plans`);
  await bob.locator("main .error").waitFor();
  assert.equal(await bob.locator("table").count(), 0);
  await bob.goto(`${base}/#/event/${SECRET_ID}`);
  await bob.locator("main .error").filter({ hasText: "not found" }).waitFor();
  assert.ok(!(await bob.content()).includes("launch"), "no secret payload in the page");
  await bob.goto(`${base}/#/tail?pattern=secret.>`);
  await bob.locator("#tail-state").filter({ hasText: /closed|ended|reconnecting/ }).waitFor();
  assert.equal(await bob.locator("#tail-rows tr").count(), 0);
  // As the console calls the API: the cookie and the page's session check.
  const check = () => ({ "cairn-session-check": localStorage.getItem("cairn.session-check") });
  const status = await bob.evaluate(
    async ([id, headers]) => (await fetch(`/v1/events/${id}?content=true`, { headers })).status,
    [SECRET_ID, await bob.evaluate(check)],
  );
  assert.equal(status, 404);
  // Bob may not ack: the group's actions are refused by the server.
  const ackStatus = await bob.evaluate(async (headers) => {
    const response = await fetch("/v1/topics/orders.eu/groups/workers/ack", {
      method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify({ ids: ["0-0"] }),
    });
    return response.status;
  }, await bob.evaluate(check));
  assert.equal(ackStatus, 403);
  await bob.screenshot({ path: `${SHOTS}/bob.png` });

  step("a tail paused before any event resumes with everything that came meanwhile");
  await bob.goto(`${base}/#/tail?pattern=public.quiet.>`);
  await bob.locator("#tail-state").filter({ hasText: "live" }).waitFor();
  await bob.getByRole("button", { name: "Pause" }).click();
  await bob.locator("#tail-state").filter({ hasText: "paused" }).waitFor();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const quiet = Array.from({ length: 25 }, (_, n) => JSON.stringify({ topic: "public.quiet.x", content: String(n) })).join("\n");
  execFileSync(CAIRN, ["--store", STORE, "append", "--batch"], { input: quiet });
  await bob.getByRole("button", { name: "Resume" }).click();
  await bob.waitForFunction(() => document.querySelectorAll("#tail-rows tr:not(.threshold)").length === 25);

  // ---- admin: the server's figures ------------------------------------
  step("server: an admin sees the store's figures, append rate and fsync latency");
  const admin = await (await browser.newContext()).newPage();
  current = admin;
  await admin.goto(`${base}/#/server`);
  await admin.getByLabel("User").fill("admin");
  await admin.getByLabel("Password").fill("adminpw");
  await admin.getByRole("button", { name: "Log in" }).click();
  await admin.locator("#server-info").filter({ hasText: "Log on disk" }).waitFor();
  await admin.locator("#server-rates").filter({ hasText: "fsync latency" }).waitFor();
  execFileSync(CAIRN, ["--store", STORE, "append", "orders.us"], { input: "{}" });
  await admin.waitForFunction(() => /Events appended\/s\d/.test(document.querySelector("#server-rates").textContent));
  await admin.screenshot({ path: `${SHOTS}/server.png` });

  step("scale: 10,000 topics are paged, a topic of 1,000,000 events opens at its end and jumps");
  let started = Date.now();
  await admin.goto(`${base}/#/topics?filter=scale.t.*`);
  await admin.waitForFunction(() => document.querySelectorAll("table[aria-label=Topics] tbody tr").length === 100);
  assert.equal(await admin.locator("table[aria-label=Topics] tbody td").first().textContent(), "scale.t.00000");
  await admin.getByRole("link", { name: "Next page" }).click();
  await admin.waitForFunction(() => document.querySelector("table[aria-label=Topics] tbody td")?.textContent === "scale.t.00100");
  step(`  two pages of 10,000 topics in ${Date.now() - started} ms`);
  started = Date.now();
  await admin.goto(`${base}/#/topic/scale.big`);
  const bigFirst = (seq) =>
    admin.waitForFunction(
      (want) => document.querySelector("table[aria-label='Events of scale.big'] tbody td")?.textContent === want,
      String(seq),
    );
  await bigFirst(999950);
  step(`  the newest page of 1,000,000 events in ${Date.now() - started} ms`);
  started = Date.now();
  await admin.getByLabel(/Jump to/).fill("500000");
  await admin.getByRole("button", { name: "Go" }).click();
  await bigFirst(500000);
  await admin.keyboard.press("n");
  await bigFirst(500050);
  step(`  a jump and a page in ${Date.now() - started} ms`);
  await admin.screenshot({ path: `${SHOTS}/scale.png` });

  // ---- another origin, named by --cors-origin --------------------------
  step("a page on a --cors-origin logs in and follows with EventSource");
  const site = http.createServer((request, response) => {
    response.setHeader("content-type", "text/html");
    response.end("<!doctype html><title>app</title><p>app</p>");
  });
  await new Promise((resolve) => site.listen(Number(CORS_PORT), "127.0.0.1", resolve));
  const other = await (await browser.newContext()).newPage();
  await other.goto(`http://127.0.0.1:${CORS_PORT}/`);
  const followed = await other.evaluate(async (server) => {
    const login = await fetch(`${server}/v1/session`, {
      method: "POST",
      credentials: "include",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: "alice", password: "alicepw" }),
    });
    if (!login.ok) return `login ${login.status}`;
    const check = (await login.json()).session_check;
    // The cookie alone is no session.
    const bare = await fetch(`${server}/v1/session`, { credentials: "include" });
    if (bare.status !== 401) return `the cookie alone answered ${bare.status}`;
    const me = await fetch(`${server}/v1/session`, { credentials: "include", headers: { "cairn-session-check": check } });
    if ((await me.json()).user !== "alice") return "no session with the check";
    return await new Promise((resolve) => {
      const url = `${server}/v1/events?topic=orders.eu&follow=true&last=1&session_check=${check}`;
      const source = new EventSource(url, { withCredentials: true });
      source.onmessage = (message) => {
        source.close();
        resolve(JSON.parse(message.data).topic);
      };
      source.onerror = () => {
        source.close();
        resolve("error");
      };
      setTimeout(() => resolve("timeout"), 5000);
    });
  }, base);
  assert.equal(followed, "orders.eu");
  site.close();
  console.log("done");
} catch (error) {
  if (current) {
    console.log(`page at ${current.url()}:\n${await current.locator("body").innerText().catch(() => "")}`);
    await current.screenshot({ path: `${SHOTS}/failure.png` }).catch(() => {});
  }
  throw error;
} finally {
  await browser.close();
}
