// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  WS_MAX_PLAINTEXT,
  decodeRelayMessages,
  decodeRoomKey,
  derivePsk,
  encodeClientMessage,
  equal,
  openChannel,
  utf8
} from "./relay-shared-SPV2KNSY.js";

// src/client.ts
var JoinRefusedError = class extends Error {
  constructor(code, text) {
    super(`join refused (error ${code}): ${text}`);
    this.code = code;
    this.text = text;
  }
  code;
  text;
  name = "JoinRefusedError";
};
var ConnectionError = class extends Error {
  name = "ConnectionError";
};
var DEFAULT_TIMEOUT_MS = 1e4;
var DEFAULT_PING_MS = 1e3;
var MAX_PING_MS = 2e3;
var RESUME_BACKOFF_MS = [0, 100, 250, 500, 1e3, 2e3];
var SYNC_MIN_GAP_MS = 1e3;
var DEFAULT_RECONNECT_WINDOW_MS = 3e4;
function bytesOf(p) {
  return typeof p === "string" ? utf8.encode(p) : p;
}
function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1e3);
}
async function within(p, ms) {
  let timer;
  await Promise.race([p, new Promise((r) => timer = setTimeout(r, ms))]);
  clearTimeout(timer);
}
function relayUrl(ipAddress, port) {
  const host = ipAddress.includes(":") && !ipAddress.startsWith("[") ? `[${ipAddress}]` : ipAddress;
  return `ws://${host}:${port}/`;
}
var Link = class {
  constructor(request, WS, useWorker, handler) {
    this.handler = handler;
    this.channel = openChannel(
      request,
      {
        plaintexts: (pts) => {
          this.lastReceived = performance.now();
          this.pending.push(...pts);
          this.drain();
        },
        closed: (cause) => {
          this.closeCause = cause;
          this.drain();
        }
      },
      WS,
      useWorker
    );
  }
  handler;
  lastReceived = performance.now();
  /** Plaintexts that could not be decoded (the whole packet is dropped, section 5). */
  malformed = 0;
  channel;
  pending = [];
  /** Messages held while the code awaiting connect() takes its turn; non-null pauses the link. */
  deferred = null;
  closeCause = null;
  /** The snapshot being assembled: its resume token, and its parts by number. */
  parts = /* @__PURE__ */ new Map();
  partsToken = null;
  heldBack = null;
  everJoined = false;
  ended = false;
  get stats() {
    const s = this.channel.stats;
    return { packetsIn: s.packetsIn, packetsOut: s.packetsOut, dropped: s.dropped + this.malformed };
  }
  drain() {
    while (this.deferred === null && this.pending.length > 0 && !this.ended) {
      let messages;
      try {
        messages = decodeRelayMessages(this.pending.shift());
      } catch {
        this.malformed++;
        continue;
      }
      this.dispatch(messages);
    }
    if (this.closeCause !== null && this.deferred === null && (this.pending.length === 0 || this.ended)) {
      this.lose(this.closeCause);
    }
  }
  /** Messages in order; a WELCOME split in parts holds back what comes between them. */
  dispatch(messages) {
    let out = [];
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      if (m.code === 16 /* Welcome */) {
        if (out.length > 0) this.handler.messages(out);
        out = [];
        if (this.partsToken === null || !sameBytes(this.partsToken, m.resumeToken)) {
          this.parts = /* @__PURE__ */ new Map();
          this.partsToken = m.resumeToken;
        }
        this.parts.set(m.parts > 0 ? m.part : this.parts.size, m.members);
        if (m.parts > 0 ? this.parts.size < m.parts : m.more) {
          this.heldBack ??= [];
          continue;
        }
        const members = [...this.parts.entries()].sort(([a], [b]) => a - b).flatMap(([, part]) => part);
        const held = this.heldBack ?? [];
        this.parts = /* @__PURE__ */ new Map();
        this.partsToken = null;
        this.heldBack = null;
        const first = !this.everJoined;
        this.everJoined = true;
        this.handler.welcome({ ...m, members });
        if (first) {
          this.deferred = [...held, ...messages.slice(i + 1)];
          setTimeout(() => {
            const rest = this.deferred ?? [];
            this.deferred = null;
            if (rest.length > 0 && !this.ended) this.dispatch(rest);
            this.drain();
          }, 0);
          return;
        }
        if (held.length > 0) this.handler.messages(held);
      } else if (this.heldBack !== null) {
        this.heldBack.push(m);
      } else if (!this.everJoined) {
        if (m.code === 22 /* Error */) {
          this.handler.refused(m.errorCode, m.text);
          this.end("join refused");
          return;
        }
      } else {
        out.push(m);
      }
    }
    if (out.length > 0) this.handler.messages(out);
  }
  send(plaintexts) {
    if (!this.ended) this.channel.send(plaintexts);
  }
  /** Ends the session from this side; resolves once the socket is closed. */
  end(cause, code = 1e3) {
    const closed = this.channel.end(code);
    this.lose(cause);
    return closed;
  }
  lose(cause) {
    if (this.ended) return;
    this.ended = true;
    this.handler.lost(cause);
  }
};
var RelayClient = class {
  /** Use connect(). */
  constructor(url, psk, userId, options) {
    this.url = url;
    this.psk = psk;
    this.userId = userId;
    this.options = options;
    this.token = options.resumeToken ?? new Uint8Array(0);
    this.profileBytes = bytesOf(options.profile ?? new Uint8Array(0));
  }
  url;
  psk;
  userId;
  options;
  /** This member's connection id (a new one if a resume came too late to keep the seat). */
  connectionId = 0;
  /** Whether the join that connect() made took over an earlier seat (`options.resumeToken`). */
  resumed = false;
  /** The limits the relay announced in WELCOME. */
  limits;
  /** The latest round-trip time in milliseconds, from PING/PONG; undefined until the first PONG. */
  rtt = void 0;
  /** Packets received and sent, and dropped as the protocol says (bad header, tag, counter or
   * message), over every connection of this client. */
  get stats() {
    const s = this.link?.stats ?? { packetsIn: 0, packetsOut: 0, dropped: 0 };
    const b = this.statsBefore;
    return { packetsIn: b.packetsIn + s.packetsIn, packetsOut: b.packetsOut + s.packetsOut, dropped: b.dropped + s.dropped };
  }
  listeners = /* @__PURE__ */ new Map();
  memberMap = /* @__PURE__ */ new Map();
  link = null;
  state = "joining";
  token;
  profileBytes;
  queue = [];
  flushScheduled = false;
  pingTimer = null;
  pingId = 0;
  lastSync = -Infinity;
  statsBefore = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  closingSeen = null;
  socketClosed = Promise.resolve();
  pendingJoin = null;
  /** The other members, by connection id. */
  get members() {
    return this.memberMap;
  }
  /** This member's profile. */
  get profile() {
    return this.profileBytes;
  }
  /** The current resume token (changes with every WELCOME); keep it to resume after a reload. */
  get resumeToken() {
    return this.token;
  }
  get closed() {
    return this.state === "closed";
  }
  /** Subscribes to one event type; returns the function that unsubscribes. */
  on(type, listener) {
    let set = this.listeners.get(type);
    if (set === void 0) this.listeners.set(type, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => set.delete(listener);
  }
  emit(type, event) {
    const set = this.listeners.get(type);
    if (set === void 0) return;
    for (const listener of set) {
      try {
        listener(event);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
  /**
   * Sends `data` to every other member, or to the listed connection ids. Returns false (and
   * sends nothing) while the client is not joined: messages are not kept across a resume.
   */
  send(data, targets) {
    const bytes = bytesOf(data);
    if (bytes.length > this.limits.maxPayload) {
      throw new RangeError(`payload of ${bytes.length} bytes is over the relay's ${this.limits.maxPayload}`);
    }
    const t = targets === void 0 || targets === null || targets.length === 0 ? null : targets;
    return this.enqueue({ code: 2 /* Send */, data: bytes, targets: t });
  }
  /** Changes this member's profile; the others get a `profile` event (this client does not).
   * Returns false, changing nothing, while the client is not joined. */
  updateProfile(profile) {
    const bytes = bytesOf(profile);
    if (bytes.length > this.limits.maxProfile) {
      throw new RangeError(`profile of ${bytes.length} bytes is over the relay's ${this.limits.maxProfile}`);
    }
    if (!this.enqueue({ code: 3 /* Profile */, profile: bytes })) return false;
    this.profileBytes = bytes;
    return true;
  }
  /** Sends BYE (the others see LEAVE reason 1) and closes the connection. */
  async close() {
    if (this.state === "closed") return;
    if (this.state === "joined") {
      this.enqueue({ code: 5 /* Bye */ });
      this.flush();
    }
    this.finish("closed by the client");
    await within(this.socketClosed, 1e3);
  }
  /** @internal connect()'s first session. */
  async start() {
    try {
      const welcome = await this.openSession();
      this.applyWelcome(welcome, true);
      this.resumed = welcome.resumed;
    } catch (e) {
      this.finish(String(e), false);
      throw e;
    }
    this.state = "joined";
    const every = Math.min(this.options.pingIntervalMs ?? DEFAULT_PING_MS, MAX_PING_MS, this.limits.keepaliveTimeoutMs / 4);
    this.pingTimer = setInterval(() => this.tick(), every);
    this.tick();
  }
  /** A new link, resolved with its complete WELCOME; the link ends if that takes too long. */
  openSession() {
    if (this.link !== null) {
      const s = this.stats;
      this.statsBefore = s;
    }
    const timeout = this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.link?.end(`not joined within ${timeout} ms`), timeout);
      this.pendingJoin = {
        resolve: (w) => {
          clearTimeout(timer);
          resolve(w);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        }
      };
      const join = encodeClientMessage({
        code: 1 /* Join */,
        userId: this.userId,
        profile: this.profileBytes,
        accessToken: this.options.accessToken ?? null,
        resumeToken: this.token.length > 0 ? this.token : null
      });
      const request = { url: this.url, psk: this.psk, join };
      const link = new Link(request, this.options.WebSocket, this.options.worker ?? true, {
        welcome: (w) => this.onWelcome(link, w),
        messages: (ms) => this.link === link && this.onMessages(ms),
        refused: (code, text) => {
          const pending = this.pendingJoin;
          this.pendingJoin = null;
          pending?.reject(new JoinRefusedError(code, text));
        },
        lost: (cause) => this.onLost(link, cause)
      });
      this.link = link;
    });
  }
  onWelcome(link, w) {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.resolve(w);
    } else {
      this.applyWelcome(w, false);
    }
  }
  /** Takes a complete WELCOME: the seat, the token, and the members (events for what changed). */
  applyWelcome(w, first) {
    this.connectionId = w.connectionId;
    this.token = w.resumeToken;
    this.limits = w.limits;
    const fresh = new Map(w.members.map((m) => [m.connectionId, m]));
    for (const [id, old] of [...this.memberMap]) {
      if (!fresh.has(id)) {
        this.memberMap.delete(id);
        if (!first) this.emit("left", { connectionId: id, userId: old.userId, reason: 0 });
      }
    }
    for (const m of w.members) {
      const old = this.memberMap.get(m.connectionId);
      this.memberMap.set(m.connectionId, m);
      if (first) continue;
      if (old === void 0) this.emit("joined", m);
      else if (!equal(old.profile, m.profile)) this.emit("profile", m);
    }
  }
  onMessages(messages) {
    for (const m of messages) {
      switch (m.code) {
        case 20 /* Message */:
          if (!this.memberMap.has(m.sender)) this.sync();
          this.emit("message", { sender: m.sender, data: m.data });
          break;
        case 17 /* MemberJoin */: {
          const member = { connectionId: m.connectionId, userId: m.userId, profile: m.profile };
          this.memberMap.set(m.connectionId, member);
          this.emit("joined", member);
          break;
        }
        case 18 /* Leave */: {
          const old = this.memberMap.get(m.connectionId);
          if (old === void 0) break;
          this.memberMap.delete(m.connectionId);
          this.emit("left", { connectionId: m.connectionId, userId: old.userId, reason: m.reason });
          break;
        }
        case 19 /* MemberProfile */: {
          const old = this.memberMap.get(m.connectionId);
          if (old === void 0) {
            this.sync();
            break;
          }
          const member = { ...old, profile: m.profile };
          this.memberMap.set(m.connectionId, member);
          this.emit("profile", member);
          break;
        }
        case 21 /* Pong */:
          this.rtt = Math.max(0, nowUs() - m.clientTimeUs) / 1e3;
          break;
        case 22 /* Error */:
          this.emit("error", { code: m.errorCode, text: m.text });
          break;
        case 23 /* Closing */:
          this.closingSeen = `closing (${m.reason}): ${m.text}`;
          this.emit("closing", { reason: m.reason, text: m.text });
          break;
        case 24 /* PathPing */:
          this.enqueue({ code: 6 /* PathPong */, challenge: m.challenge });
          break;
        case 16 /* Welcome */:
          break;
      }
    }
  }
  sync() {
    const now = performance.now();
    if (now - this.lastSync < SYNC_MIN_GAP_MS) return;
    this.lastSync = now;
    this.enqueue({ code: 7 /* Sync */ });
  }
  tick() {
    const link = this.link;
    if (this.state !== "joined" || link === null) return;
    if (performance.now() - link.lastReceived > this.limits.keepaliveTimeoutMs) {
      link.end("relay silent past the keepalive timeout");
      return;
    }
    this.enqueue({ code: 4 /* Ping */, pingId: ++this.pingId, clientTimeUs: nowUs() });
  }
  enqueue(m) {
    if (this.state !== "joined" && !(this.state === "joining" && m.code === 5 /* Bye */)) return false;
    const bytes = encodeClientMessage(m);
    this.queue.push(bytes);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
    return true;
  }
  /** Messages queued in one turn of the event loop leave together, as few packets as fit. */
  flush() {
    this.flushScheduled = false;
    if (this.queue.length === 0) return;
    const queue = this.queue;
    this.queue = [];
    const plaintexts = [];
    let batch = [];
    let size = 0;
    const cut = () => {
      if (batch.length === 0) return;
      const pt = new Uint8Array(size);
      let at = 0;
      for (const b of batch) {
        pt.set(b, at);
        at += b.length;
      }
      plaintexts.push(pt);
      batch = [];
      size = 0;
    };
    for (const m of queue) {
      if (size + m.length > WS_MAX_PLAINTEXT) cut();
      batch.push(m);
      size += m.length;
    }
    cut();
    this.link?.send(plaintexts);
  }
  onLost(link, cause) {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.reject(new ConnectionError(`no session: ${cause}`));
      return;
    }
    if (this.state !== "joined") return;
    if (this.closingSeen !== null || this.options.autoResume === false) {
      this.finish(this.closingSeen ?? `connection lost: ${cause}`);
      return;
    }
    void this.resume(cause);
  }
  async resume(cause) {
    this.state = "reconnecting";
    const previous = this.connectionId;
    const deadline = performance.now() + (this.options.reconnectWindowMs ?? DEFAULT_RECONNECT_WINDOW_MS);
    for (let attempt = 1; ; attempt++) {
      if (this.state !== "reconnecting") return;
      this.emit("reconnecting", { attempt, cause });
      const wait = RESUME_BACKOFF_MS[Math.min(attempt - 1, RESUME_BACKOFF_MS.length - 1)];
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (this.state !== "reconnecting") return;
      try {
        const welcome = await this.openSession();
        if (this.state !== "reconnecting") return;
        this.applyWelcome(welcome, false);
        this.state = "joined";
        this.emit("resumed", { connectionId: welcome.connectionId, resumed: welcome.resumed, previousConnectionId: previous });
        return;
      } catch (e) {
        if (e instanceof JoinRefusedError) {
          this.emit("error", { code: e.code, text: e.text });
          this.finish(`resume refused: ${e.message}`);
          return;
        }
        cause = String(e);
        if (performance.now() > deadline) {
          this.finish(`could not resume: ${cause}`);
          return;
        }
      }
    }
  }
  finish(reason, announce = true) {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.socketClosed = this.link?.end(reason) ?? Promise.resolve();
    if (announce) this.emit("closed", { reason });
  }
};
async function connect(url, roomKey, userId, options = {}) {
  const key = typeof roomKey === "string" ? decodeRoomKey(roomKey) : roomKey;
  if (key.length !== 32) throw new TypeError("room key must be 32 bytes");
  const uid = utf8.encode(userId).length;
  if (uid < 1 || uid > 128) throw new TypeError("user id must be 1 to 128 bytes of UTF-8");
  const client = new RelayClient(url, await derivePsk(key), userId, options);
  await client.start();
  return client;
}
function sameBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export {
  JoinRefusedError,
  ConnectionError,
  relayUrl,
  RelayClient,
  connect
};
