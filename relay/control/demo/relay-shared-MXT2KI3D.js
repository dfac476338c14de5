// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  ErrorCode,
  WELCOME_ENTRY_BYTES,
  WS_MAX_PLAINTEXT,
  decodeRelayMessages,
  decodeRoomKey,
  derivePsk,
  encodeClientMessage,
  equal,
  openChannel,
  pageTimer,
  utf8
} from "./relay-shared-4GUO7CUI.js";

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
var RESUMED_ELSEWHERE = "resumed elsewhere";
var DEFAULT_TIMEOUT_MS = 5e3;
var DEFAULT_PING_MS = 2e3;
var MAX_PING_MS = 2e3;
var MIN_PING_MS = 50;
var DEFAULT_KEEPALIVE_MS = 1e4;
var RESUME_BACKOFF_MS = [0, 100, 250, 500, 1e3, 2e3];
var SYNC_MIN_GAP_MS = 1e3;
var SYNC_ATTEMPTS = 3;
var DEFAULT_RECONNECT_WINDOW_MS = 3e4;
var HELD_MAX = 4096;
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
function relayUrl(ipAddress, port, options = {}) {
  const host = ipAddress.includes(":") && !ipAddress.startsWith("[") ? `[${ipAddress}]` : ipAddress;
  return `${options.tls ? "wss" : "ws"}://${host}:${port}/`;
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
        closed: (cause, close) => {
          this.closeCause = cause;
          this.closeFrame = close;
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
  /** Messages dropped because HELD_MAX were already held. */
  overflow = 0;
  channel;
  pending = [];
  /** Messages held while the code awaiting connect() takes its turn; non-null pauses the link. */
  deferred = null;
  closeCause = null;
  closeFrame = null;
  /** The snapshot being assembled: whose (connection id, resume token), and its parts by number. */
  parts = /* @__PURE__ */ new Map();
  partsKey = null;
  /** What arrived after a part of the first snapshot, applied once it is whole; null: none held. */
  heldBack = null;
  everJoined = false;
  ended = false;
  get stats() {
    const s = this.channel.stats;
    return { packetsIn: s.packetsIn, packetsOut: s.packetsOut, dropped: s.dropped + this.malformed + this.overflow };
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
      this.lose(this.closeCause, this.closeFrame);
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
        const key = this.partsKey;
        if (key === null || key.connectionId !== m.connectionId || !sameBytes(key.token, m.resumeToken)) {
          this.parts = /* @__PURE__ */ new Map();
          this.partsKey = { connectionId: m.connectionId, token: m.resumeToken };
          if (this.heldBack !== null) this.heldBack = [];
        }
        this.parts.set(m.parts > 0 ? m.part : this.parts.size, m.members);
        if (m.parts > 0 ? this.parts.size < m.parts : m.more) {
          if (!this.everJoined) this.heldBack ??= [];
          continue;
        }
        const members = [...this.parts.entries()].sort(([a], [b]) => a - b).flatMap(([, part]) => part);
        const held = this.heldBack ?? [];
        this.parts = /* @__PURE__ */ new Map();
        this.partsKey = null;
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
      } else if (!this.everJoined && m.code === 24 /* PathPing */) {
        this.send([encodeClientMessage({ code: 6 /* PathPong */, challenge: m.challenge })]);
      } else if (!this.everJoined && m.code === 23 /* Closing */) {
        this.handler.closing(m.reason, m.text);
        this.end(`closing (${m.reason}): ${m.text}`);
        return;
      } else if (this.heldBack !== null) {
        if (this.heldBack.length < HELD_MAX) this.heldBack.push(m);
        else this.overflow++;
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
    this.lose(cause, null);
    return closed;
  }
  lose(cause, close) {
    if (this.ended) return;
    this.ended = true;
    this.handler.lost(cause, close);
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
    this.acceptedProfile = this.profileBytes;
    this.timer = pageTimer(options.worker ?? true, options.WebSocket);
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
  /** The keepalive's and the resume's timer (channel.ts, pageTimer: in the transport worker
   * where it runs). */
  timer;
  pingTimer = null;
  pingEvery = 0;
  pingId = 0;
  /** When the next PING is due, and whether data went out since the last one: then the timer
   * waits a quarter interval more for data to carry it (docs/protocol.md 6: PING when the
   * client sends nothing else). */
  nextPingAt = 0;
  dataSincePing = false;
  lastSync = -Infinity;
  syncAttempts = 0;
  syncTimer = null;
  /** The profile the relay is known to hold, and the ones sent since, each with the PING sent
   * right behind it: the relay refuses a PROFILE with ERROR 5 and takes one silently, so the
   * PONG to that PING, with no ERROR 5 before it, says it was taken. */
  acceptedProfile;
  sentProfiles = [];
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
    if (!this.enqueue({ code: 2 /* Send */, data: bytes, targets: t })) return false;
    if (performance.now() >= this.nextPingAt && !this.relaySilent()) this.ping();
    if (!this.dataSincePing) {
      this.dataSincePing = true;
      if (this.pingTimer !== null) this.armTick();
    }
    return true;
  }
  /** Changes this member's profile; the others get a `profile` event (this client does not).
   * Returns false, changing nothing, while the client is not joined. Throws RangeError over
   * `limits.maxProfile`, or when user id and profile together are over WELCOME_ENTRY_BYTES.
   * Should the relay refuse it all the same (ERROR 5, an `error` event), `profile` goes back
   * to the last one it took. */
  updateProfile(profile) {
    const bytes = bytesOf(profile);
    checkProfile(bytes, this.userId, this.limits.maxProfile);
    if (!this.enqueue({ code: 3 /* Profile */, profile: bytes })) return false;
    this.profileBytes = bytes;
    this.sentProfiles.push({ profile: bytes, pingId: this.ping() });
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
    this.armPing();
    this.tick();
  }
  /** The relay's keepalive timeout; its WELCOME's 0 is no value (the Python client's reading):
   * taken as is, it would PING without pause and count every moment as silence. */
  keepaliveMs() {
    return this.limits.keepaliveTimeoutMs || DEFAULT_KEEPALIVE_MS;
  }
  /** (Re)starts the PING timer for the latest WELCOME's limits: well inside the relay's
   * keepalive timeout, whatever it is configured to (a resume may reach a relay set otherwise). */
  armPing() {
    const wanted = this.options.pingIntervalMs ?? DEFAULT_PING_MS;
    const every = Math.max(MIN_PING_MS, Math.min(wanted, MAX_PING_MS, this.keepaliveMs() / 4));
    if (this.pingTimer !== null && every === this.pingEvery) return;
    this.pingEvery = every;
    this.nextPingAt = Math.min(this.nextPingAt, performance.now() + every);
    this.armTick();
  }
  /** The timer for the next PING (and the silence check): when due, a quarter interval later
   * where data went out since the last. */
  armTick() {
    if (this.pingTimer !== null) this.pingTimer();
    if (this.state === "closed") {
      this.pingTimer = null;
      return;
    }
    const due = this.nextPingAt + (this.dataSincePing ? this.pingEvery / 4 : 0);
    this.pingTimer = this.timer(() => {
      this.pingTimer = null;
      this.tick();
    }, Math.max(0, due - performance.now()));
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
      try {
        this.link = this.openLink();
      } catch (e) {
        this.link = null;
        this.pendingJoin = null;
        clearTimeout(timer);
        reject(new ConnectionError(`cannot connect: ${String(e)}`));
      }
    });
  }
  /** A link that JOINs with this client's user id, profile and resume token. */
  openLink() {
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
      closing: (reason, text) => {
        if (this.link !== link) return;
        this.closingSeen = `closing (${reason}): ${text}`;
        if (this.state === "reconnecting") this.emit("closing", { reason, text });
      },
      lost: (cause, close) => this.onLost(link, cause, close)
    });
    return link;
  }
  onWelcome(link, w) {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.resolve(w);
    } else if (w.connectionId === this.connectionId) {
      this.applyWelcome(w, false);
      this.armPing();
    }
  }
  /** Takes a complete WELCOME: the seat, the token, and the members (events for what changed). */
  applyWelcome(w, first) {
    this.syncAnswered();
    this.connectionId = w.connectionId;
    this.token = w.resumeToken;
    this.limits = w.limits;
    const members = w.members.filter((m) => m.connectionId !== w.connectionId);
    const fresh = new Map(members.map((m) => [m.connectionId, m]));
    for (const [id, old] of [...this.memberMap]) {
      if (!fresh.has(id)) {
        this.memberMap.delete(id);
        if (!first) this.emit("left", { connectionId: id, userId: old.userId, reason: 0 });
      }
    }
    for (const m of members) {
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
          if (!this.memberMap.has(m.sender) && m.sender !== this.connectionId) this.sync();
          this.emit("message", { sender: m.sender, data: m.data });
          break;
        case 17 /* MemberJoin */: {
          if (m.connectionId === this.connectionId) break;
          const old = this.memberMap.get(m.connectionId);
          const member = { connectionId: m.connectionId, userId: m.userId, profile: m.profile };
          this.memberMap.set(m.connectionId, member);
          if (old === void 0) this.emit("joined", member);
          else if (!equal(old.profile, m.profile)) this.emit("profile", member);
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
          this.profilesTaken(m.pingId);
          break;
        case 22 /* Error */:
          if (m.errorCode === ErrorCode.ProfileTooLarge) this.profileRefused();
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
  /** PROFILEs sent before PING `pingId` were taken: its PONG came, and no ERROR 5 before it. */
  profilesTaken(pingId) {
    while (this.sentProfiles.length > 0 && this.sentProfiles[0].pingId <= pingId) {
      this.acceptedProfile = this.sentProfiles.shift().profile;
    }
  }
  /** ERROR 5: the relay answers in order, so it refused the oldest PROFILE not yet taken. */
  profileRefused() {
    if (this.sentProfiles.shift() === void 0) return;
    this.profileBytes = this.sentProfiles.at(-1)?.profile ?? this.acceptedProfile;
  }
  /** Asks for a fresh snapshot (a sender or member it does not know: a JOIN it missed). */
  sync() {
    if (this.syncTimer !== null || performance.now() - this.lastSync < SYNC_MIN_GAP_MS) return;
    this.syncAttempts = 0;
    this.askSync();
  }
  askSync() {
    if (!this.enqueue({ code: 7 /* Sync */ })) return;
    this.lastSync = performance.now();
    this.syncAttempts++;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      if (this.syncAttempts < SYNC_ATTEMPTS) this.askSync();
    }, SYNC_MIN_GAP_MS);
  }
  syncAnswered() {
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.syncTimer = null;
  }
  /** Sends a PING now; returns its id. The next is due an interval from now. */
  ping() {
    this.enqueue({ code: 4 /* Ping */, pingId: ++this.pingId, clientTimeUs: nowUs() });
    this.nextPingAt = performance.now() + this.pingEvery;
    this.dataSincePing = false;
    if (this.pingTimer !== null) this.armTick();
    return this.pingId;
  }
  tick() {
    if (this.state !== "joined" || this.link === null || this.relaySilent()) return;
    this.ping();
    this.armTick();
  }
  /** Whether the relay has said nothing for its keepalive timeout; the link is ended then. A
   * live relay answers every PING, so this is checked whenever one goes, alone or riding. */
  relaySilent() {
    const link = this.link;
    if (link === null || performance.now() - link.lastReceived <= this.keepaliveMs()) return false;
    link.end("relay silent past the keepalive timeout");
    return true;
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
  onLost(link, cause, close) {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.reject(new ConnectionError(`no session: ${cause}`));
      return;
    }
    if (this.state !== "joined") return;
    if (close !== null && close.code === 1e3 && close.reason === RESUMED_ELSEWHERE) {
      this.finish(RESUMED_ELSEWHERE);
      return;
    }
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
      if (wait > 0) await new Promise((r) => this.timer(r, wait));
      if (this.state !== "reconnecting") return;
      try {
        const welcome = await this.openSession();
        if (this.state !== "reconnecting") return;
        this.applyWelcome(welcome, false);
        this.acceptedProfile = this.profileBytes;
        this.sentProfiles = [];
        this.state = "joined";
        this.armPing();
        this.emit("resumed", { connectionId: welcome.connectionId, resumed: welcome.resumed, previousConnectionId: previous });
        return;
      } catch (e) {
        if (e instanceof JoinRefusedError) {
          this.emit("error", { code: e.code, text: e.text });
          this.finish(`resume refused: ${e.message}`);
          return;
        }
        if (this.closingSeen !== null) {
          this.finish(this.closingSeen);
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
    if (this.pingTimer !== null) this.pingTimer();
    this.pingTimer = null;
    this.syncAnswered();
    this.socketClosed = this.link?.end(reason) ?? Promise.resolve();
    if (announce) this.emit("closed", { reason });
  }
};
async function connect(url, roomKey, userId, options = {}) {
  checkUrl(url);
  const key = typeof roomKey === "string" ? decodeRoomKey(roomKey) : roomKey;
  if (key.length !== 32) throw new TypeError("room key must be 32 bytes");
  const uid = utf8.encode(userId).length;
  if (uid < 1 || uid > 128) throw new TypeError("user id must be 1 to 128 bytes of UTF-8");
  checkProfile(bytesOf(options.profile ?? new Uint8Array(0)), userId, Infinity);
  const client = new RelayClient(url, await derivePsk(key), userId, options);
  await client.start();
  return client;
}
function checkUrl(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(`not a URL: ${url}`);
  }
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`the relay's URL is ws:// or wss:// (see relayUrl), not ${url}`);
  }
  if (parsed.href.includes("#")) throw new TypeError(`a WebSocket URL has no #fragment: ${url}`);
}
function checkProfile(profile, userId, maxProfile) {
  if (profile.length > maxProfile) {
    throw new RangeError(`profile of ${profile.length} bytes is over the relay's ${maxProfile}`);
  }
  const uid = utf8.encode(userId).length;
  if (uid + profile.length > WELCOME_ENTRY_BYTES) {
    throw new RangeError(
      `user id (${uid} bytes) and profile (${profile.length} bytes) are over ${WELCOME_ENTRY_BYTES} bytes together`
    );
  }
}
function sameBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export {
  JoinRefusedError,
  ConnectionError,
  RESUMED_ELSEWHERE,
  relayUrl,
  RelayClient,
  connect
};
