/**
 * The client's session logic against a relay in this process (fake-relay.ts): what a relay may
 * send (docs/protocol.md sections 5 to 7) and what the client must make of it. Imported by
 * vectors.test.ts, so `npm test` runs both.
 */

import { strict as assert } from "node:assert";
import { test } from "node:test";

import { utf8 } from "../src/bytes.js";
import type { WebSocketConstructor } from "../src/channel.js";
import { connect, ConnectionError, relayUrl, RESUMED_ELSEWHERE, type ConnectOptions, type RelayClient, type RelayEvents } from "../src/client.js";
import { FakeRelay, LIMITS, ROOM_KEY, sleep, token, until, welcome } from "./fake-relay.js";

const URL_ = "ws://relay.test/";
/** Each test's limit: one that hangs fails by its name, well inside the Python runner's. */
const TIMEOUT = { timeout: 15_000 };

async function joined(relay: FakeRelay, options: ConnectOptions = {}, userId = "me"): Promise<RelayClient> {
  return connect(URL_, ROOM_KEY, userId, { WebSocket: relay.WebSocket, ...options });
}

/** Every event of the client, as [type, payload], in order. */
function record(c: RelayClient): [keyof RelayEvents, any][] {
  const log: [keyof RelayEvents, any][] = [];
  const types: (keyof RelayEvents)[] = ["joined", "left", "profile", "message", "error", "closing", "reconnecting", "resumed", "closed"];
  for (const t of types) c.on(t, (e) => log.push([t, e]));
  return log;
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
}

test("a close 'resumed elsewhere' ends the client: no resume, the reason says why", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const c = await joined(relay);
  const log = record(c);
  relay.last.drop(1000, RESUMED_ELSEWHERE);
  await until(() => c.closed, 2000, "closed");
  await sleep(50);
  assert.deepEqual(log, [["closed", { reason: RESUMED_ELSEWHERE }]]);
  assert.equal(relay.sockets.length, 1);
});

test("keepalive_timeout_ms 0 is no value: the default 10 s, no PING flood, no reconnects", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const limits = [...LIMITS.slice(0, 5), 0, 15_000];
  relay.onJoin = (s) => s.push(welcome(1, token(1), [], { limits }));
  const c = await joined(relay);
  const log = record(c);
  await sleep(300);
  assert.equal(relay.sockets.length, 1, "reconnected");
  assert.ok(relay.last.sent(4).length <= 2, `${relay.last.sent(4).length} PINGs in 300 ms`);
  assert.deepEqual(log, []);
  await c.close();
});

test("a sending client's PING rides in its data; an idle one's goes alone, on time", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const c = await joined(relay, { pingIntervalMs: 200 });
  await sleep(50); // past the first PING, sent at the WELCOME
  const socket = relay.last;
  const [packets, pings] = [socket.packets, socket.sent(4).length];
  let sends = 0;
  for (; sends < 50; sends++) {
    c.send(utf8.encode("tick"));
    await sleep(20);
  }
  await sleep(10);
  // a PING of its own is a wake-up of the relay's process: none while data goes out anyway
  assert.equal(socket.packets - packets, sends, "packets other than the data");
  const riding = socket.sent(4).length - pings;
  assert.ok(riding >= 3 && riding <= 7, `${riding} PINGs in ${sends} sends over about 1 s`);
  const [idlePackets, idlePings] = [socket.packets, socket.sent(4).length];
  await sleep(700);
  const alone = socket.sent(4).length - idlePings;
  assert.ok(alone >= 2 && alone <= 4, `${alone} PINGs in 700 ms idle`);
  assert.equal(socket.packets - idlePackets, alone);
  assert.ok(c.rtt !== undefined);
  await c.close();
});

test("a resume's WELCOME sets the PING interval anew", TIMEOUT, async () => {
  const relay = new FakeRelay();
  relay.onJoin = (s, _join, i) => {
    const limits = i === 0 ? LIMITS : [...LIMITS.slice(0, 5), 400, 15_000];
    s.push(welcome(1, token(i + 1), [], { limits, resumed: i > 0 }));
  };
  const c = await joined(relay);
  relay.last.drop(1006);
  await until(() => relay.sockets.length === 2 && c.connectionId === 1 && !c.closed && c.limits.keepaliveTimeoutMs === 400);
  await sleep(450);
  // 400 ms keepalive: a PING every 100 ms at most
  assert.ok(relay.last.sent(4).length >= 3, `${relay.last.sent(4).length} PINGs in 450 ms`);
  await c.close();
});

test("a part of another snapshot drops what was held back behind the first; joined, nothing waits", TIMEOUT, async () => {
  const relay = new FakeRelay();
  relay.onJoin = (s) => {
    s.push(welcome(1, token(1), [[2, "bob", new Uint8Array(0)]], { part: 0, parts: 2 }));
    s.push([17, 3, "carol", new Uint8Array(0)]); // shown (or not) by the newer snapshot
    s.push(welcome(1, token(2), [[2, "bob", new Uint8Array(0)]]));
  };
  const c = await joined(relay);
  const log = record(c);
  await sleep(20);
  assert.deepEqual([...c.members.keys()], [2]);
  assert.deepEqual(log, []);
  // Once joined, a snapshot that never completes does not hold up what follows it.
  relay.last.push(welcome(1, token(3), [[2, "bob", new Uint8Array(0)]], { part: 0, parts: 2 }));
  relay.last.push([20, 2, utf8.encode("still here")]);
  await until(() => log.length > 0, 1000, "message");
  assert.deepEqual(log, [["message", { sender: 2, data: utf8.encode("still here") }]]);
  await c.close();
});

test("at most 4096 messages are held while the first snapshot arrives", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const flood = Array.from({ length: 5000 }, (_, i) => [20, 2, new Uint8Array([i & 0xff])]);
  relay.onJoin = (s) => {
    s.push(welcome(1, token(1), [[2, "bob", new Uint8Array(0)]], { part: 0, parts: 2 }));
    s.push(...flood);
    s.push(welcome(1, token(1), [], { part: 1, parts: 2 }));
  };
  const c = await joined(relay);
  let got = 0;
  c.on("message", () => got++);
  await sleep(50);
  assert.equal(got, 4096);
  assert.equal(c.stats.dropped, 5000 - 4096);
  await c.close();
});

test("a bad URL or no WebSocket: connect() fails at once and leaves no timer", TIMEOUT, async () => {
  await assert.rejects(connect("ftp://relay.test/", ROOM_KEY, "me"), TypeError);
  await assert.rejects(connect("ws://relay.test/#x", ROOM_KEY, "me"), TypeError);
  const before = timers();
  const throwing = function () {
    throw new SyntaxError("refused");
  } as unknown as WebSocketConstructor;
  await assert.rejects(connect(URL_, ROOM_KEY, "me", { WebSocket: throwing }), (e: Error) => {
    return e instanceof ConnectionError && e.message.includes("refused");
  });
  const g = globalThis as { WebSocket?: unknown };
  const saved = Object.getOwnPropertyDescriptor(g, "WebSocket");
  delete g.WebSocket;
  try {
    await assert.rejects(connect(URL_, ROOM_KEY, "me"), (e: Error) => e instanceof ConnectionError && /WebSocket/.test(e.message));
  } finally {
    if (saved !== undefined) Object.defineProperty(g, "WebSocket", saved);
  }
  assert.equal(timers(), before, "a connect timeout was left running");
});

test("relayUrl: ws:// unless asked for wss://, IPv6 in brackets; a resume reopens the same URL", TIMEOUT, async () => {
  assert.equal(relayUrl("203.0.113.7", 7000), "ws://203.0.113.7:7000/");
  assert.equal(relayUrl("relay.example", 7000, { tls: true }), "wss://relay.example:7000/");
  assert.equal(relayUrl("2001:db8::1", 7000, { tls: true }), "wss://[2001:db8::1]:7000/");
  assert.equal(relayUrl("[2001:db8::1]", 7000), "ws://[2001:db8::1]:7000/");
  assert.equal(relayUrl("relay.example", 7000, { tls: false }), "ws://relay.example:7000/");
  const relay = new FakeRelay();
  const url = relayUrl("relay.example", 7000, { tls: true });
  const c = await connect(url, ROOM_KEY, "me", { WebSocket: relay.WebSocket });
  relay.last.drop(1006);
  await until(() => relay.sockets.length === 2, 2000, "a resume");
  assert.deepEqual(relay.sockets.map((s) => s.url), [url, url]);
  await c.close();
});

test("a WebSocket that fails before it opens with error alone (Node 20's) fails connect() at once", TIMEOUT, async () => {
  // undici 6 fires no close after such an error, and its readyState stays CONNECTING.
  class ErrorOnly {
    binaryType = "blob";
    readyState = 0;
    onopen: (() => void) | null = null;
    onmessage: (() => void) | null = null;
    onclose: (() => void) | null = null;
    onerror: (() => void) | null = null;
    private readonly errorListeners: (() => void)[] = [];
    constructor(readonly url: string) {
      setTimeout(() => {
        this.onerror?.();
        for (const l of this.errorListeners) l();
      }, 10);
    }
    addEventListener(type: string, listener: () => void): void {
      if (type === "error") this.errorListeners.push(listener);
    }
    send(): void {}
    close(): void {}
  }
  const started = performance.now();
  const options = { WebSocket: ErrorOnly as unknown as WebSocketConstructor, timeoutMs: 5000 };
  await assert.rejects(connect("wss://relay.test/", ROOM_KEY, "me", options), (e: Error) => {
    return e instanceof ConnectionError && e.message.includes("connection failed (1006)");
  });
  assert.ok(performance.now() - started < 1000, "waited for the join timeout");
});

test("CLOSING before the first WELCOME ends the join, and a resume, for good", TIMEOUT, async () => {
  const relay = new FakeRelay();
  relay.onJoin = (s) => {
    s.push([23, 5, "shutdown"]);
    s.drop(1001, "shutdown");
  };
  await assert.rejects(joined(relay), (e: Error) => e instanceof ConnectionError && e.message.includes("closing (5): shutdown"));
  assert.equal(relay.sockets.length, 1);

  const again = new FakeRelay();
  again.onJoin = (s, _join, i) => {
    if (i === 0) s.push(welcome(1, token(1)));
    else {
      s.push([23, 1, "deleted"]);
      s.drop(1000, "deleted");
    }
  };
  const c = await joined(again);
  const log = record(c);
  again.last.drop(1006);
  await until(() => c.closed, 2000, "closed");
  await sleep(150);
  assert.deepEqual(log.map(([t]) => t), ["reconnecting", "closing", "closed"]);
  assert.match(log[2]![1].reason, /closing \(1\): deleted/);
  assert.equal(again.sockets.length, 2);
});

test("the relay's PING before the WELCOME is answered", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const challenge = 0xfedc_ba98_7654_3210n;
  relay.onJoin = (s) => s.push([24, challenge]);
  relay.onOther = (s, m) => {
    if (m[0] === 6 && m[1] === challenge) s.push(welcome(1, token(1)));
  };
  const c = await joined(relay, { timeoutMs: 1000 });
  await c.close();
});

test("a SYNC without an answer is asked again after 1 s, 3 times in all; an answered one is not", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const c = await joined(relay);
  relay.last.push([20, 9, new Uint8Array(0)]); // a sender it does not know
  await sleep(2300);
  assert.equal(relay.last.sent(7).length, 3);
  await c.close();

  const answered = new FakeRelay();
  answered.onOther = (s, m) => m[0] === 7 && s.push(welcome(1, token(5), [[9, "nine", new Uint8Array(0)]]));
  const d = await joined(answered);
  answered.last.push([20, 9, new Uint8Array(0)]);
  await sleep(1200);
  assert.equal(answered.last.sent(7).length, 1);
  assert.deepEqual([...d.members.keys()], [9]);
  await d.close();
});

test("a profile the relay refuses (ERROR 5) is not kept; one over 1,083 bytes with the user id is refused here", TIMEOUT, async () => {
  const relay = new FakeRelay();
  relay.onOther = (s, m) => {
    if (m[0] === 3 && (m[1] as Uint8Array).length > 4) s.push([22, 5, "profile too large"]);
  };
  const c = await joined(relay, { profile: "v1" });
  const log = record(c);
  assert.equal(c.updateProfile("v2"), true);
  await until(() => c.rtt !== undefined && relay.last.sent(4).length >= 2, 1000, "PONG");
  await sleep(20);
  assert.equal(c.updateProfile("too long"), true);
  assert.equal(new TextDecoder().decode(c.profile), "too long"); // until the relay says otherwise
  await until(() => log.length > 0, 1000, "error");
  assert.deepEqual(log, [["error", { code: 5, text: "profile too large" }]]);
  assert.equal(new TextDecoder().decode(c.profile), "v2");
  await c.close();

  const long = "u".repeat(100);
  const d = await joined(new FakeRelay(), {}, long);
  assert.throws(() => d.updateProfile(new Uint8Array(1083 - 100 + 1)), /1083 bytes together/);
  assert.equal(d.updateProfile(new Uint8Array(1083 - 100)), true);
  await d.close();
  await assert.rejects(joined(new FakeRelay(), { profile: new Uint8Array(1000) }, long), RangeError);
});

test("members: a SYNC snapshot of another connection id is ignored, never itself, one `joined` per member", TIMEOUT, async () => {
  const relay = new FakeRelay();
  const empty = new Uint8Array(0);
  relay.onJoin = (s) => s.push(welcome(1, token(1), [[1, "me", empty], [2, "bob", empty]]));
  const c = await joined(relay);
  const log = record(c);
  assert.deepEqual([...c.members.keys()], [2]);
  relay.last.push(welcome(7, token(7), [[5, "eve", empty]])); // not this seat's
  relay.last.push([17, 1, "me", empty]); // itself
  relay.last.push([17, 2, "bob", empty]); // known
  relay.last.push([17, 2, "bob", utf8.encode("new")]); // known, a new profile
  relay.last.push([20, 2, empty]);
  await until(() => log.some(([t]) => t === "message"));
  assert.deepEqual([...c.members.keys()], [2]);
  assert.deepEqual(c.resumeToken, token(1));
  assert.deepEqual(log, [
    ["profile", { connectionId: 2, userId: "bob", profile: utf8.encode("new") }],
    ["message", { sender: 2, data: empty }],
  ]);
  await c.close();
});

test("connect() gives up after 5 s by default", TIMEOUT, async () => {
  const relay = new FakeRelay();
  relay.onJoin = () => {}; // admitted, never welcomed
  const t0 = performance.now();
  await assert.rejects(joined(relay), ConnectionError);
  const took = performance.now() - t0;
  assert.ok(took > 4900 && took < 6000, `${took} ms`);
});
