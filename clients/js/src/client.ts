/**
 * A relay client over WebSocket (docs/protocol.md): one session per connection, joined once its
 * WELCOME is complete, kept alive with PING, resumed with the resume token when the connection
 * drops. The same code runs in browsers and in Node (global WebSocket: Node 22+, or Node 20 with
 * --experimental-websocket, or pass one in `options.WebSocket`). The transport (channel.ts)
 * runs in a Worker in browsers; the session logic here runs where the caller is.
 */

import { equal, utf8 } from "./bytes.js";
import {
  openChannel,
  pageTimer,
  type CancelTimer,
  type Channel,
  type ChannelRequest,
  type ChannelStats,
  type SocketClose,
  type WebSocketConstructor,
} from "./channel.js";
import {
  Code,
  decodeRelayMessages,
  decodeRoomKey,
  derivePsk,
  encodeClientMessage,
  ErrorCode,
  WELCOME_ENTRY_BYTES,
  WS_MAX_PLAINTEXT,
  type ClientMessage,
  type Limits,
  type RelayMessage,
  type WireMember,
} from "./protocol.js";

export type { Limits } from "./protocol.js";

/** Bytes, or text sent as UTF-8. */
export type Payload = Uint8Array | string;

export interface Member {
  readonly connectionId: number;
  readonly userId: string;
  readonly profile: Uint8Array;
}

export interface ConnectOptions {
  /** This member's profile as the others see it (at most `limits.maxProfile` bytes). */
  profile?: Payload;
  /** A user access token for `userId` (docs/protocol.md section 8), when the relay requires one. */
  accessToken?: string | null;
  /** A resume token from an earlier client of the same user (e.g. before a page reload): the
   * relay gives back that seat if it still holds it (`client.resumed` then says so). */
  resumeToken?: Uint8Array | null;
  /** How long connect() may take, handshake and WELCOME included (default 5 s, as
   * docs/protocol.md section 6 says of the project's clients); each resume attempt too. */
  timeoutMs?: number;
  /** How often PING is sent: the keepalive and the `rtt` sample (default 2 s; at most 2 s and
   * a quarter of the relay's keepalive timeout). While the client sends, its PING rides in its
   * data once due (the relay is woken once, not twice). */
  pingIntervalMs?: number;
  /** Resume after the connection drops (default true). */
  autoResume?: boolean;
  /** How long to keep trying after a drop (default 30 s). Within the relay's resume grace
   * (`limits.resumeGraceMs`) the seat is kept; after it, a success is a fresh join. */
  reconnectWindowMs?: number;
  /** A WebSocket constructor; default `globalThis.WebSocket`. Giving one keeps the connection
   * on this thread. */
  WebSocket?: WebSocketConstructor;
  /** In a browser, run the WebSocket and the crypto in a dedicated Worker (relay-worker.js, next
   * to this module), so a busy room's packets stay off the page's main thread (default true;
   * without Worker, or if it cannot start, the client runs on this thread). */
  worker?: boolean;
}

export type { ChannelStats, WebSocketConstructor } from "./channel.js";

export interface RelayEvents {
  /** Another member joined (or appeared in a fresh snapshot after a resume). */
  joined: Member;
  /** A member left. `reason` is a LeaveReason; 0 when it was missing from a fresh snapshot. */
  left: { connectionId: number; userId: string; reason: number };
  /** A member changed its profile. */
  profile: { connectionId: number; userId: string; profile: Uint8Array };
  /** Data from another member; `sender` is stamped by the relay. */
  message: { sender: number; data: Uint8Array };
  /** The relay refused something (an ErrorCode): rate limited, payload too large, ... */
  error: { code: number; text: string };
  /** The relay is ending this member's session or the room (a CloseReason); `closed` follows. */
  closing: { reason: number; text: string };
  /** The connection dropped; the client is starting a new session to resume its seat. */
  reconnecting: { attempt: number; cause: string };
  /** Back in the room after a drop: same seat (`resumed`) or, once the seat had expired, a new one. */
  resumed: { connectionId: number; resumed: boolean; previousConnectionId: number };
  /** The client is done: close(), CLOSING, a refused or failed resume, or another client took
   * this seat with its resume token (`reason` RESUMED_ELSEWHERE). No events follow. */
  closed: { reason: string };
}

export type RelayEventName = keyof RelayEvents;
type Listener<K extends RelayEventName> = (event: RelayEvents[K]) => void;

/** connect() failed: the relay refused the JOIN with ERROR `code` (an ErrorCode). */
export class JoinRefusedError extends Error {
  override name = "JoinRefusedError";
  constructor(
    readonly code: number,
    readonly text: string,
  ) {
    super(`join refused (error ${code}): ${text}`);
  }
}

/** connect() or a resume could not reach a joined session (transport, handshake, timeout). */
export class ConnectionError extends Error {
  override name = "ConnectionError";
}

/** The `closed` reason when the relay moved this seat to a newer session: another client resumed
 * it with this client's resume token (a copied session, a duplicated tab). The relay closes the
 * old connection with 1000 and this text (docs/protocol.md 7.2); the client does not resume. */
export const RESUMED_ELSEWHERE = "resumed elsewhere";

const DEFAULT_TIMEOUT_MS = 5_000; // docs/protocol.md section 6: the project's clients, 5 s
const DEFAULT_PING_MS = 2_000; // each PING alone is a wake-up of the relay's process
const MAX_PING_MS = 2_000; // docs/protocol.md section 6: PING at least every 2 s
/** A relay announcing a tiny keepalive timeout must not turn the keepalive into a flood. */
const MIN_PING_MS = 50;
/** The relay's keepalive timeout when its WELCOME says 0 (no value): its default (section 6). */
const DEFAULT_KEEPALIVE_MS = 10_000;
const RESUME_BACKOFF_MS = [0, 100, 250, 500, 1000, 2000];
/** A SYNC unanswered this long (dropped by a busy relay) is asked again, up to SYNC_ATTEMPTS in
 * all (docs/protocol.md 5.2). */
const SYNC_MIN_GAP_MS = 1_000;
const SYNC_ATTEMPTS = 3;
const DEFAULT_RECONNECT_WINDOW_MS = 30_000;
/** Messages held while the first snapshot is still arriving, at most (as the Python client). */
const HELD_MAX = 4096;

function bytesOf(p: Payload): Uint8Array {
  return typeof p === "string" ? utf8.encode(p) : p;
}

function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Waits for `p`, or `ms` at most. */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

export interface RelayUrlOptions {
  /** `wss://`: the relay has a certificate for `ipAddress` (then a DNS name on it). Not chosen
   * from the page's scheme: a page on https may still reach a dev relay on ws://localhost. */
  tls?: boolean;
}

/** `ws://host:port/`, or `wss://` with `tls`, for a room record's ipAddress and port (brackets
 * for IPv6). The relay serves both on the one port when it has a certificate. */
export function relayUrl(ipAddress: string, port: number, options: RelayUrlOptions = {}): string {
  const host = ipAddress.includes(":") && !ipAddress.startsWith("[") ? `[${ipAddress}]` : ipAddress;
  return `${options.tls ? "wss" : "ws"}://${host}:${port}/`;
}

interface Welcome {
  connectionId: number;
  resumeToken: Uint8Array;
  limits: Limits;
  members: WireMember[];
  resumed: boolean;
}

interface LinkHandler {
  welcome(w: Welcome): void;
  messages(ms: RelayMessage[]): void;
  refused(code: number, text: string): void;
  /** CLOSING before the first WELCOME (after it, CLOSING comes in `messages`). */
  closing(reason: number, text: string): void;
  lost(cause: string, close: SocketClose | null): void;
}

/**
 * One session over one channel (channel.ts: the WebSocket, handshake and crypto): the messages
 * in each plaintext, a WELCOME assembled from its parts, a refused JOIN.
 */
class Link {
  lastReceived = performance.now();
  /** Plaintexts that could not be decoded (the whole packet is dropped, section 5). */
  malformed = 0;
  /** Messages dropped because HELD_MAX were already held. */
  overflow = 0;
  private readonly channel: Channel;
  private pending: Uint8Array[] = [];
  /** Messages held while the code awaiting connect() takes its turn; non-null pauses the link. */
  private deferred: RelayMessage[] | null = null;
  private closeCause: string | null = null;
  private closeFrame: SocketClose | null = null;
  /** The snapshot being assembled: whose (connection id, resume token), and its parts by number. */
  private parts = new Map<number, WireMember[]>();
  private partsKey: { connectionId: number; token: Uint8Array } | null = null;
  /** What arrived after a part of the first snapshot, applied once it is whole; null: none held. */
  private heldBack: RelayMessage[] | null = null;
  private everJoined = false;
  private ended = false;

  constructor(
    request: ChannelRequest,
    WS: WebSocketConstructor | undefined,
    useWorker: boolean,
    private readonly handler: LinkHandler,
  ) {
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
        },
      },
      WS,
      useWorker,
    );
  }

  get stats(): ChannelStats {
    const s = this.channel.stats;
    return { packetsIn: s.packetsIn, packetsOut: s.packetsOut, dropped: s.dropped + this.malformed + this.overflow };
  }

  private drain(): void {
    while (this.deferred === null && this.pending.length > 0 && !this.ended) {
      let messages: RelayMessage[];
      try {
        messages = decodeRelayMessages(this.pending.shift()!);
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
  private dispatch(messages: RelayMessage[]): void {
    let out: RelayMessage[] = [];
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      if (m.code === Code.Welcome) {
        if (out.length > 0) this.handler.messages(out);
        out = [];
        const key = this.partsKey;
        if (key === null || key.connectionId !== m.connectionId || !sameBytes(key.token, m.resumeToken)) {
          // A part of another snapshot replaces what was held, and what was held back behind
          // those parts: the relay made the new snapshot after it sent them, so it shows them.
          this.parts = new Map();
          this.partsKey = { connectionId: m.connectionId, token: m.resumeToken };
          if (this.heldBack !== null) this.heldBack = [];
        }
        this.parts.set(m.parts > 0 ? m.part : this.parts.size, m.members);
        if (m.parts > 0 ? this.parts.size < m.parts : m.more) {
          // Only the first snapshot holds back what follows it (nothing can be applied before
          // it); once joined, messages go on (a snapshot that never completes must not swallow
          // them), and a complete one is compared with the members as they are then.
          if (!this.everJoined) this.heldBack ??= [];
          continue;
        }
        const members = [...this.parts.entries()].sort(([a], [b]) => a - b).flatMap(([, part]) => part);
        const held = this.heldBack ?? [];
        this.parts = new Map();
        this.partsKey = null;
        this.heldBack = null;
        const first = !this.everJoined;
        this.everJoined = true;
        this.handler.welcome({ ...m, members });
        if (first) {
          // Give the code awaiting connect() a turn to add its listeners before what follows.
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
      } else if (!this.everJoined && m.code === Code.PathPing) {
        // Answered at once, as the Python client does: the relay may check the path any time.
        this.send([encodeClientMessage({ code: Code.PathPong, challenge: m.challenge })]);
      } else if (!this.everJoined && m.code === Code.Closing) {
        // The relay ends the session (shutdown, deletion) before it welcomed it: no resume.
        this.handler.closing(m.reason, m.text);
        this.end(`closing (${m.reason}): ${m.text}`);
        return;
      } else if (this.heldBack !== null) {
        // JOIN, LEAVE, ... while the first snapshot is still arriving
        if (this.heldBack.length < HELD_MAX) this.heldBack.push(m);
        else this.overflow++;
      } else if (!this.everJoined) {
        // Before WELCOME the relay answers a JOIN only with ERROR, then forgets the session.
        if (m.code === Code.Error) {
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

  send(plaintexts: Uint8Array[]): void {
    if (!this.ended) this.channel.send(plaintexts);
  }

  /** Ends the session from this side; resolves once the socket is closed. */
  end(cause: string, code = 1000): Promise<void> {
    const closed = this.channel.end(code);
    this.lose(cause, null);
    return closed;
  }

  private lose(cause: string, close: SocketClose | null): void {
    if (this.ended) return;
    this.ended = true;
    this.handler.lost(cause, close);
  }
}

type State = "joining" | "joined" | "reconnecting" | "closed";

export class RelayClient {
  /** This member's connection id (a new one if a resume came too late to keep the seat). */
  connectionId = 0;
  /** Whether the join that connect() made took over an earlier seat (`options.resumeToken`). */
  resumed = false;
  /** The limits the relay announced in WELCOME. */
  limits!: Limits;
  /** The latest round-trip time in milliseconds, from PING/PONG; undefined until the first PONG. */
  rtt: number | undefined = undefined;
  /** Packets received and sent, and dropped as the protocol says (bad header, tag, counter or
   * message), over every connection of this client. */
  get stats(): ChannelStats {
    const s = this.link?.stats ?? { packetsIn: 0, packetsOut: 0, dropped: 0 };
    const b = this.statsBefore;
    return { packetsIn: b.packetsIn + s.packetsIn, packetsOut: b.packetsOut + s.packetsOut, dropped: b.dropped + s.dropped };
  }

  private readonly listeners = new Map<RelayEventName, Set<Listener<RelayEventName>>>();
  private readonly memberMap = new Map<number, Member>();
  private link: Link | null = null;
  private state: State = "joining";
  private token: Uint8Array;
  private profileBytes: Uint8Array;
  private queue: Uint8Array[] = [];
  private flushScheduled = false;
  /** The keepalive's and the resume's timer (channel.ts, pageTimer: in the transport worker
   * where it runs). */
  private readonly timer: (fn: () => void, ms: number) => CancelTimer;
  private pingTimer: CancelTimer | null = null;
  private pingEvery = 0;
  private pingId = 0;
  /** When the next PING is due, and whether data went out since the last one: then the timer
   * waits a quarter interval more for data to carry it (docs/protocol.md 6: PING when the
   * client sends nothing else). */
  private nextPingAt = 0;
  private dataSincePing = false;
  private lastSync = -Infinity;
  private syncAttempts = 0;
  private syncTimer: ReturnType<typeof setTimeout> | null = null;
  /** The profile the relay is known to hold, and the ones sent since, each with the PING sent
   * right behind it: the relay refuses a PROFILE with ERROR 5 and takes one silently, so the
   * PONG to that PING, with no ERROR 5 before it, says it was taken. */
  private acceptedProfile: Uint8Array;
  private sentProfiles: { profile: Uint8Array; pingId: number }[] = [];
  private statsBefore: ChannelStats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  private closingSeen: string | null = null;
  private socketClosed: Promise<void> = Promise.resolve();
  private pendingJoin: { resolve: (w: Welcome) => void; reject: (e: Error) => void } | null = null;

  /** Use connect(). */
  constructor(
    readonly url: string,
    private readonly psk: Uint8Array,
    readonly userId: string,
    private readonly options: ConnectOptions,
  ) {
    this.token = options.resumeToken ?? new Uint8Array(0);
    this.profileBytes = bytesOf(options.profile ?? new Uint8Array(0));
    this.acceptedProfile = this.profileBytes;
    this.timer = pageTimer(options.worker ?? true, options.WebSocket);
  }

  /** The other members, by connection id. */
  get members(): ReadonlyMap<number, Member> {
    return this.memberMap;
  }

  /** This member's profile. */
  get profile(): Uint8Array {
    return this.profileBytes;
  }

  /** The current resume token (changes with every WELCOME); keep it to resume after a reload. */
  get resumeToken(): Uint8Array {
    return this.token;
  }

  get closed(): boolean {
    return this.state === "closed";
  }

  /** Subscribes to one event type; returns the function that unsubscribes. */
  on<K extends RelayEventName>(type: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (set === undefined) this.listeners.set(type, (set = new Set()));
    set.add(listener as Listener<RelayEventName>);
    return () => set.delete(listener as Listener<RelayEventName>);
  }

  private emit<K extends RelayEventName>(type: K, event: RelayEvents[K]): void {
    const set = this.listeners.get(type);
    if (set === undefined) return;
    for (const listener of set) {
      try {
        (listener as Listener<K>)(event);
      } catch (e) {
        queueMicrotask(() => {
          throw e; // reported as uncaught, without breaking the client
        });
      }
    }
  }

  /**
   * Sends `data` to every other member, or to the listed connection ids. Returns false (and
   * sends nothing) while the client is not joined: messages are not kept across a resume.
   */
  send(data: Payload, targets?: readonly number[] | null): boolean {
    const bytes = bytesOf(data);
    if (bytes.length > this.limits.maxPayload) {
      throw new RangeError(`payload of ${bytes.length} bytes is over the relay's ${this.limits.maxPayload}`);
    }
    const t = targets === undefined || targets === null || targets.length === 0 ? null : targets;
    if (!this.enqueue({ code: Code.Send, data: bytes, targets: t })) return false;
    if (performance.now() >= this.nextPingAt && !this.relaySilent()) this.ping(); // rides in this packet
    if (!this.dataSincePing) {
      this.dataSincePing = true; // the next PING waits a little for data to ride on
      if (this.pingTimer !== null) this.armTick();
    }
    return true;
  }

  /** Changes this member's profile; the others get a `profile` event (this client does not).
   * Returns false, changing nothing, while the client is not joined. Throws RangeError over
   * `limits.maxProfile`, or when user id and profile together are over WELCOME_ENTRY_BYTES.
   * Should the relay refuse it all the same (ERROR 5, an `error` event), `profile` goes back
   * to the last one it took. */
  updateProfile(profile: Payload): boolean {
    const bytes = bytesOf(profile);
    checkProfile(bytes, this.userId, this.limits.maxProfile);
    // Kept only once sent: a resumed seat keeps the profile the relay last had (docs/protocol.md 6).
    if (!this.enqueue({ code: Code.Profile, profile: bytes })) return false;
    this.profileBytes = bytes;
    this.sentProfiles.push({ profile: bytes, pingId: this.ping() });
    return true;
  }

  /** Sends BYE (the others see LEAVE reason 1) and closes the connection. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    if (this.state === "joined") {
      this.enqueue({ code: Code.Bye });
      this.flush(); // the channel closes the socket once the BYE is written
    }
    this.finish("closed by the client");
    await within(this.socketClosed, 1000);
  }

  /** @internal connect()'s first session. */
  async start(): Promise<void> {
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
    this.tick(); // a first RTT sample now
  }

  /** The relay's keepalive timeout; its WELCOME's 0 is no value (the Python client's reading):
   * taken as is, it would PING without pause and count every moment as silence. */
  private keepaliveMs(): number {
    return this.limits.keepaliveTimeoutMs || DEFAULT_KEEPALIVE_MS;
  }

  /** (Re)starts the PING timer for the latest WELCOME's limits: well inside the relay's
   * keepalive timeout, whatever it is configured to (a resume may reach a relay set otherwise). */
  private armPing(): void {
    const wanted = this.options.pingIntervalMs ?? DEFAULT_PING_MS;
    const every = Math.max(MIN_PING_MS, Math.min(wanted, MAX_PING_MS, this.keepaliveMs() / 4));
    if (this.pingTimer !== null && every === this.pingEvery) return;
    this.pingEvery = every;
    this.nextPingAt = Math.min(this.nextPingAt, performance.now() + every);
    this.armTick();
  }

  /** The timer for the next PING (and the silence check): when due, a quarter interval later
   * where data went out since the last. */
  private armTick(): void {
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
  private openSession(): Promise<Welcome> {
    if (this.link !== null) {
      const s = this.stats;
      this.statsBefore = s;
    }
    const timeout = this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise<Welcome>((resolve, reject) => {
      const timer = setTimeout(() => this.link?.end(`not joined within ${timeout} ms`), timeout);
      this.pendingJoin = {
        resolve: (w) => {
          clearTimeout(timer);
          resolve(w);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      try {
        this.link = this.openLink();
      } catch (e) {
        // No link to end it (e.g. no WebSocket here): the timer goes, and the join fails now.
        this.link = null;
        this.pendingJoin = null;
        clearTimeout(timer);
        reject(new ConnectionError(`cannot connect: ${String(e)}`));
      }
    });
  }

  /** A link that JOINs with this client's user id, profile and resume token. */
  private openLink(): Link {
    const join = encodeClientMessage({
      code: Code.Join,
      userId: this.userId,
      profile: this.profileBytes,
      accessToken: this.options.accessToken ?? null,
      resumeToken: this.token.length > 0 ? this.token : null,
    });
    const request = { url: this.url, psk: this.psk, join };
    const link: Link = new Link(request, this.options.WebSocket, this.options.worker ?? true, {
      welcome: (w) => this.onWelcome(link, w),
      messages: (ms) => this.link === link && this.onMessages(ms),
      refused: (code, text) => {
        const pending = this.pendingJoin;
        this.pendingJoin = null;
        pending?.reject(new JoinRefusedError(code, text));
      },
      closing: (reason, text) => {
        if (this.link !== link) return;
        this.closingSeen = `closing (${reason}): ${text}`; // no resume after it
        if (this.state === "reconnecting") this.emit("closing", { reason, text });
      },
      lost: (cause, close) => this.onLost(link, cause, close),
    });
    return link;
  }

  private onWelcome(link: Link, w: Welcome): void {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.resolve(w);
    } else if (w.connectionId === this.connectionId) {
      this.applyWelcome(w, false); // a fresh snapshot (SYNC, or a repeated JOIN)
      this.armPing();
    }
    // else: not this seat's snapshot (a relay's mistake); ignored, as the Python client does
  }

  /** Takes a complete WELCOME: the seat, the token, and the members (events for what changed). */
  private applyWelcome(w: Welcome, first: boolean): void {
    this.syncAnswered();
    this.connectionId = w.connectionId;
    this.token = w.resumeToken;
    this.limits = w.limits;
    // Never this member itself, whatever a relay lists (the snapshot holds the others).
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
      if (old === undefined) this.emit("joined", m);
      else if (!equal(old.profile, m.profile)) this.emit("profile", m);
    }
  }

  private onMessages(messages: RelayMessage[]): void {
    for (const m of messages) {
      switch (m.code) {
        case Code.Message:
          if (!this.memberMap.has(m.sender) && m.sender !== this.connectionId) this.sync();
          this.emit("message", { sender: m.sender, data: m.data });
          break;
        case Code.MemberJoin: {
          if (m.connectionId === this.connectionId) break; // not in its own member list
          const old = this.memberMap.get(m.connectionId);
          const member = { connectionId: m.connectionId, userId: m.userId, profile: m.profile };
          this.memberMap.set(m.connectionId, member);
          // Already known (a snapshot showed it first): no second `joined`, at most a new profile.
          if (old === undefined) this.emit("joined", member);
          else if (!equal(old.profile, m.profile)) this.emit("profile", member);
          break;
        }
        case Code.Leave: {
          const old = this.memberMap.get(m.connectionId);
          if (old === undefined) break;
          this.memberMap.delete(m.connectionId);
          this.emit("left", { connectionId: m.connectionId, userId: old.userId, reason: m.reason });
          break;
        }
        case Code.MemberProfile: {
          const old = this.memberMap.get(m.connectionId);
          if (old === undefined) {
            this.sync();
            break;
          }
          const member = { ...old, profile: m.profile };
          this.memberMap.set(m.connectionId, member);
          this.emit("profile", member);
          break;
        }
        case Code.Pong:
          this.rtt = Math.max(0, nowUs() - m.clientTimeUs) / 1000;
          this.profilesTaken(m.pingId);
          break;
        case Code.Error:
          if (m.errorCode === ErrorCode.ProfileTooLarge) this.profileRefused();
          this.emit("error", { code: m.errorCode, text: m.text });
          break;
        case Code.Closing:
          this.closingSeen = `closing (${m.reason}): ${m.text}`;
          this.emit("closing", { reason: m.reason, text: m.text });
          break;
        case Code.PathPing:
          this.enqueue({ code: Code.PathPong, challenge: m.challenge });
          break;
        case Code.Welcome:
          break; // handled by the link
      }
    }
  }

  /** PROFILEs sent before PING `pingId` were taken: its PONG came, and no ERROR 5 before it. */
  private profilesTaken(pingId: number): void {
    while (this.sentProfiles.length > 0 && this.sentProfiles[0]!.pingId <= pingId) {
      this.acceptedProfile = this.sentProfiles.shift()!.profile;
    }
  }

  /** ERROR 5: the relay answers in order, so it refused the oldest PROFILE not yet taken. */
  private profileRefused(): void {
    if (this.sentProfiles.shift() === undefined) return;
    this.profileBytes = this.sentProfiles.at(-1)?.profile ?? this.acceptedProfile;
  }

  /** Asks for a fresh snapshot (a sender or member it does not know: a JOIN it missed). */
  private sync(): void {
    if (this.syncTimer !== null || performance.now() - this.lastSync < SYNC_MIN_GAP_MS) return;
    this.syncAttempts = 0;
    this.askSync();
  }

  private askSync(): void {
    if (!this.enqueue({ code: Code.Sync })) return;
    this.lastSync = performance.now();
    this.syncAttempts++;
    // A busy relay drops a SYNC without an answer: asked again after 1 s, 3 times in all (5.2).
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      if (this.syncAttempts < SYNC_ATTEMPTS) this.askSync();
    }, SYNC_MIN_GAP_MS);
  }

  private syncAnswered(): void {
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.syncTimer = null;
  }

  /** Sends a PING now; returns its id. The next is due an interval from now. */
  private ping(): number {
    this.enqueue({ code: Code.Ping, pingId: ++this.pingId, clientTimeUs: nowUs() });
    this.nextPingAt = performance.now() + this.pingEvery;
    this.dataSincePing = false;
    if (this.pingTimer !== null) this.armTick();
    return this.pingId;
  }

  private tick(): void {
    if (this.state !== "joined" || this.link === null || this.relaySilent()) return;
    this.ping();
    this.armTick();
  }

  /** Whether the relay has said nothing for its keepalive timeout; the link is ended then. A
   * live relay answers every PING, so this is checked whenever one goes, alone or riding. */
  private relaySilent(): boolean {
    const link = this.link;
    if (link === null || performance.now() - link.lastReceived <= this.keepaliveMs()) return false;
    link.end("relay silent past the keepalive timeout");
    return true;
  }

  private enqueue(m: ClientMessage): boolean {
    if (this.state !== "joined" && !(this.state === "joining" && m.code === Code.Bye)) return false;
    const bytes = encodeClientMessage(m);
    this.queue.push(bytes);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
    return true;
  }

  /** Messages queued in one turn of the event loop leave together, as few packets as fit. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.queue.length === 0) return;
    const queue = this.queue;
    this.queue = [];
    const plaintexts: Uint8Array[] = [];
    let batch: Uint8Array[] = [];
    let size = 0;
    const cut = (): void => {
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

  private onLost(link: Link, cause: string, close: SocketClose | null): void {
    if (this.link !== link) return;
    const pending = this.pendingJoin;
    if (pending !== null) {
      this.pendingJoin = null;
      pending.reject(new ConnectionError(`no session: ${cause}`));
      return;
    }
    if (this.state !== "joined") return;
    if (close !== null && close.code === 1000 && close.reason === RESUMED_ELSEWHERE) {
      // Another client resumed this seat with this client's token (a copied session): taking
      // it back would only take it from that one, which would take it back, without end.
      this.finish(RESUMED_ELSEWHERE);
      return;
    }
    if (this.closingSeen !== null || this.options.autoResume === false) {
      this.finish(this.closingSeen ?? `connection lost: ${cause}`);
      return;
    }
    void this.resume(cause);
  }

  private async resume(cause: string): Promise<void> {
    this.state = "reconnecting";
    const previous = this.connectionId;
    const deadline = performance.now() + (this.options.reconnectWindowMs ?? DEFAULT_RECONNECT_WINDOW_MS);
    for (let attempt = 1; ; attempt++) {
      if (this.state !== "reconnecting") return;
      this.emit("reconnecting", { attempt, cause });
      const wait = RESUME_BACKOFF_MS[Math.min(attempt - 1, RESUME_BACKOFF_MS.length - 1)]!;
      // Timed as the PING is, so that a hidden tab resumes too (pageTimer).
      if (wait > 0) await new Promise<void>((r) => this.timer(r, wait));
      if (this.state !== "reconnecting") return;
      try {
        const welcome = await this.openSession();
        if (this.state !== "reconnecting") return;
        this.applyWelcome(welcome, false);
        // A PROFILE in flight when the connection dropped may or may not have been taken: the
        // JOIN carried it too, and this client goes on as if the relay has it.
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
          this.finish(this.closingSeen); // CLOSING before the WELCOME: the room is gone
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

  private finish(reason: string, announce = true): void {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.pingTimer !== null) this.pingTimer();
    this.pingTimer = null;
    this.syncAnswered();
    this.socketClosed = this.link?.end(reason) ?? Promise.resolve();
    if (announce) this.emit("closed", { reason });
  }
}

/**
 * Joins the room at `url` (ws://ipAddress:port/, or wss:// to a relay with a certificate; see
 * relayUrl) with its `encryptionKey`. Resolves once the WELCOME is complete: `members`,
 * `connectionId` and `limits` are set. Add listeners right after it resolves: events are held
 * until then. Rejects with JoinRefusedError (room full, unauthorized, overloaded) or
 * ConnectionError (wrong room key, relay unreachable, a certificate not trusted, timeout); a
 * wrong key shows as the relay closing the connection (1008) during the handshake.
 */
export async function connect(
  url: string,
  roomKey: string | Uint8Array,
  userId: string,
  options: ConnectOptions = {},
): Promise<RelayClient> {
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

/** A URL the WebSocket constructor takes, checked here: its error thrown later, inside the page's
 * transport worker, would be that worker's to report. */
function checkUrl(url: string): void {
  let parsed: URL;
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

/** The relay's profile rules (docs/protocol.md section 9), checked before it refuses (ERROR 5). */
function checkProfile(profile: Uint8Array, userId: string, maxProfile: number): void {
  if (profile.length > maxProfile) {
    throw new RangeError(`profile of ${profile.length} bytes is over the relay's ${maxProfile}`);
  }
  const uid = utf8.encode(userId).length;
  if (uid + profile.length > WELCOME_ENTRY_BYTES) {
    throw new RangeError(
      `user id (${uid} bytes) and profile (${profile.length} bytes) are over ${WELCOME_ENTRY_BYTES} bytes together`,
    );
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
