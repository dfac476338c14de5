/**
 * The transport of one session: a WebSocket carrying HELLO, ACCEPT, then sealed DATA both ways
 * (docs/protocol.md sections 4, 6, 7.2). It hands up plaintexts in order and knows nothing of
 * messages. In a browser it runs in a dedicated Worker (relay-worker.ts) so that a busy room's
 * packets (a WebSocket event and a WebCrypto call each) do not land on the page's main thread;
 * elsewhere, or if the worker cannot start, it runs in-thread.
 */

import {
  aeadKey,
  buildHello,
  DATA,
  deriveHelloKey,
  generateEphemeral,
  HEADER_SIZE,
  openAccept,
  openPacket,
  ProtocolError,
  sealData,
  TAG_SIZE,
  VERSION,
  type Ephemeral,
} from "./protocol.js";

export type WebSocketConstructor = new (url: string) => WebSocket;

/** The WebSocket close frame the relay sent (section 7.2 lists what each means). */
export interface SocketClose {
  code: number;
  reason: string;
}

export interface ChannelEvents {
  /** Authenticated DATA plaintexts, in counter order. */
  plaintexts(pts: Uint8Array[]): void;
  /** The connection is gone (after every plaintext that preceded it); called once. `close` is
   * the relay's close frame, null when the socket failed or this side gave up. */
  closed(cause: string, close: SocketClose | null): void;
}

export interface ChannelStats {
  packetsIn: number;
  packetsOut: number;
  /** Packets dropped as section 4.4 says: bad header, unknown session, tag, stale counter. */
  dropped: number;
}

export interface Channel {
  readonly stats: ChannelStats;
  /** Seals one DATA packet per plaintext. */
  send(plaintexts: Uint8Array[]): void;
  /** Closes the socket once everything sent so far is written; resolves when it is closed. */
  end(code: number): Promise<void>;
}

export interface ChannelRequest {
  url: string;
  psk: Uint8Array;
  /** The JOIN message, sent as the first DATA once ACCEPT has checked out. */
  join: Uint8Array;
}

/** The transport on this thread. */
export class SocketChannel implements Channel {
  readonly stats: ChannelStats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  private readonly ws: WebSocket;
  private sessionId = 0;
  private txKey: CryptoKey | null = null;
  private rxKey: CryptoKey | null = null;
  private txCounter = 0;
  /** The last DATA counter accepted; a number: no session reaches 2^53 packets. */
  private rxCounter = 0;
  /** Packets being opened, in arrival order; `pt` is undefined until WebCrypto answers. */
  private inbound: { counter: number; pt: Uint8Array | null | undefined }[] = [];
  private accepting: Promise<void> = Promise.resolve();
  private tx: Promise<void> = Promise.resolve();
  private closeCause: string | null = null;
  private closeFrame: SocketClose | null = null;
  private done = false;
  private readonly closedSocket: Promise<void>;

  constructor(
    WS: WebSocketConstructor,
    private readonly request: ChannelRequest,
    private readonly events: ChannelEvents,
  ) {
    const hello = this.prepareHello();
    hello.catch(() => {}); // reported when the socket opens
    this.ws = new WS(request.url);
    this.ws.binaryType = "arraybuffer";
    this.closedSocket = new Promise((resolve) => {
      this.ws.addEventListener("close", () => resolve());
      this.ws.addEventListener("error", () => this.ws.readyState === 0 && resolve()); // see onerror
    });
    this.ws.onopen = () => {
      hello.then(
        ([, packet]) => this.ws.readyState === 1 && this.ws.send(packet as Uint8Array<ArrayBuffer>),
        (e: unknown) => this.fail(`cannot build HELLO: ${String(e)}`),
      );
    };
    this.ws.onmessage = (ev: MessageEvent) => {
      if (!(ev.data instanceof ArrayBuffer)) return; // the relay sends binary messages only
      if (this.rxKey !== null) this.receive(ev.data);
      else {
        const packet = new Uint8Array(ev.data); // until ACCEPT, only ACCEPT is expected
        this.accepting = this.accepting.then(() => this.accept(packet, hello));
      }
    };
    this.ws.onclose = (ev: CloseEvent) => {
      // After the packets already received: an ERROR that preceded the close is seen first.
      this.closeCause = `connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
      this.closeFrame = { code: ev.code, reason: ev.reason };
      void this.accepting.then(() => this.deliver());
    };
    this.ws.onerror = () => {
      // A close event follows, except from Node 20's WebSocket (undici 6), whose connection that
      // failed before it opened (refused, a certificate not trusted) fires error alone and stays
      // CONNECTING: the join would wait out its timeout, each resume attempt too.
      if (this.ws.readyState !== 0 || this.closeCause !== null) return;
      this.closeCause = "connection failed (1006)";
      this.closeFrame = { code: 1006, reason: "" };
      void this.accepting.then(() => this.deliver());
    };
  }

  private async prepareHello(): Promise<[Ephemeral, Uint8Array]> {
    const eph = await generateEphemeral();
    const helloKey = await aeadKey(await deriveHelloKey(this.request.psk, eph.publicKey));
    return [eph, await buildHello(helloKey, eph.publicKey)];
  }

  private async accept(packet: Uint8Array, hello: Promise<[Ephemeral, Uint8Array]>): Promise<void> {
    if (this.rxKey !== null || this.done) return;
    try {
      const [eph] = await hello;
      const { sessionId, keys } = await openAccept(packet, this.request.psk, eph);
      this.sessionId = sessionId;
      this.txKey = await aeadKey(keys.c2s);
      this.rxKey = await aeadKey(keys.s2c);
    } catch (e) {
      this.fail(e instanceof ProtocolError ? `bad ACCEPT: ${e.message}` : String(e));
      return;
    }
    this.send([this.request.join]);
  }

  /**
   * A DATA packet: checked (section 4.4), then opened. The decryptions run concurrently and are
   * taken in arrival order, one promise per packet: this is the hot path of a busy room.
   */
  private receive(data: ArrayBuffer): void {
    this.stats.packetsIn++;
    const v = new DataView(data);
    if (
      data.byteLength < HEADER_SIZE + TAG_SIZE ||
      v.getUint8(0) !== VERSION ||
      v.getUint8(1) !== DATA ||
      v.getUint16(2) !== 0 ||
      v.getUint32(4) !== this.sessionId ||
      v.getUint32(8) >= 0x20_0000
    ) {
      this.stats.dropped++;
      return;
    }
    const counter = v.getUint32(8) * 0x1_0000_0000 + v.getUint32(12);
    if (counter <= this.rxCounter) {
      this.stats.dropped++;
      return;
    }
    const entry: { counter: number; pt: Uint8Array | null | undefined } = { counter, pt: undefined };
    this.inbound.push(entry);
    openPacket(this.rxKey!, new Uint8Array(data)).then(
      (pt) => {
        entry.pt = new Uint8Array(pt);
        this.deliver();
      },
      () => {
        entry.pt = null;
        this.deliver();
      },
    );
  }

  private deliver(): void {
    const out: Uint8Array[] = [];
    while (this.inbound.length > 0 && this.inbound[0]!.pt !== undefined) {
      const { counter, pt } = this.inbound.shift()!;
      // Over WebSocket each counter must exceed the last accepted (section 4.4), after the tag.
      if (pt == null || counter <= this.rxCounter || this.done) {
        this.stats.dropped++;
        continue;
      }
      this.rxCounter = counter;
      out.push(pt);
    }
    if (out.length > 0) this.events.plaintexts(out);
    if (this.closeCause !== null && this.inbound.length === 0) this.fail(this.closeCause, this.closeFrame);
  }

  send(plaintexts: Uint8Array[]): void {
    if (this.txKey === null || this.done || this.ws.readyState !== 1) return;
    for (const pt of plaintexts) {
      const sealed = sealData(this.txKey, this.sessionId, ++this.txCounter, pt).then(
        (p) => p,
        () => null,
      );
      this.tx = this.tx.then(async () => {
        const packet = await sealed;
        if (packet !== null && this.ws.readyState === 1) {
          this.ws.send(packet as Uint8Array<ArrayBuffer>);
          this.stats.packetsOut++;
        }
      });
    }
  }

  async end(code: number): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.tx;
      this.close(code);
    }
    await this.closedSocket;
  }

  private fail(cause: string, frame: SocketClose | null = null): void {
    if (this.done) return;
    this.done = true;
    this.close(1000);
    this.events.closed(cause, frame);
  }

  private close(code: number): void {
    try {
      this.ws.close(code);
    } catch {
      // already closing
    }
  }
}

/** A channel whose WebSocket could not even be made: it reports that as its close, later. */
class FailedChannel implements Channel {
  readonly stats: ChannelStats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  private ended = false;

  constructor(cause: string, events: ChannelEvents) {
    // Not from inside the constructor: the caller has not kept this channel yet.
    setTimeout(() => this.ended || events.closed(cause, null), 0);
  }

  send(): void {}

  async end(): Promise<void> {
    this.ended = true;
  }
}

/**
 * A SocketChannel, or, when the WebSocket constructor throws (a URL it refuses: another scheme,
 * a fragment; a page's security policy), a channel that closes with that cause: the failure
 * stays this channel's, whichever thread (or worker shared by other channels) it runs on.
 */
export function openSocketChannel(WS: WebSocketConstructor, request: ChannelRequest, events: ChannelEvents): Channel {
  try {
    return new SocketChannel(WS, request, events);
  } catch (e) {
    return new FailedChannel(`cannot open a WebSocket to ${request.url}: ${String(e)}`, events);
  }
}

// --- the worker ------------------------------------------------------------------------------

/** Main thread to worker. A wake is a timer of the page's (`pageTimer`), by its own ids. */
export type ToWorker =
  | { t: "open"; id: number; request: ChannelRequest }
  | { t: "send"; id: number; pts: Uint8Array[] }
  | { t: "end"; id: number; code: number }
  | { t: "wake"; id: number; ms: number }
  | { t: "unwake"; id: number };

/** Worker to main thread. */
export type FromWorker =
  | { t: "ready" }
  | { t: "data"; id: number; pts: Uint8Array[]; stats: ChannelStats }
  | { t: "closed"; id: number; cause: string | null; close: SocketClose | null; stats: ChannelStats }
  | { t: "wake"; id: number };

/** One worker for every channel of the page, started on first use. */
class WorkerHub {
  readonly worker: Worker;
  readonly channels = new Map<number, WorkerChannel>();
  /** True once the worker runs, false if it could not start. */
  readonly ready: Promise<boolean>;
  /** True while the worker runs (after "ready", until it fails). */
  running = false;
  private nextId = 0;
  private nextWake = 0;
  /** Timers waiting in the worker, by wake id. */
  private readonly wakes = new Map<number, () => void>();

  constructor(url: URL) {
    this.worker = new Worker(url, { type: "module", name: "gs2relay" });
    this.ready = new Promise((resolve) => {
      this.worker.onmessage = (ev: MessageEvent<FromWorker>) => {
        const m = ev.data;
        if (m.t === "ready") {
          this.running = true;
          resolve(true);
        } else if (m.t === "wake") {
          const fn = this.wakes.get(m.id);
          this.wakes.delete(m.id);
          fn?.();
        } else this.channels.get(m.id)?.fromWorker(m);
      };
      this.worker.onerror = (ev) => {
        ev.preventDefault();
        resolve(false); // before "ready": its channels run in-thread instead
        // After it (the worker died): its channels are lost, and later ones run in-thread.
        hub = null;
        this.running = false;
        for (const fn of this.wakes.values()) setTimeout(fn, 0); // early rather than never
        this.wakes.clear();
        for (const [id, c] of this.channels) {
          c.fromWorker({ t: "closed", id, cause: "worker failed", close: null, stats: c.stats });
        }
      };
    });
  }

  id(): number {
    return ++this.nextId;
  }

  post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  /** `fn` after `ms`, timed in the worker; returns what cancels it. */
  wake(fn: () => void, ms: number): CancelTimer {
    const id = ++this.nextWake;
    this.wakes.set(id, fn);
    this.post({ t: "wake", id, ms });
    return () => {
      if (this.wakes.delete(id)) this.post({ t: "unwake", id });
    };
  }
}

/** Cancels a timer of `pageTimer` (nothing once it has run). */
export type CancelTimer = () => void;

/**
 * The timer of the client's keepalive and of its waits between resume attempts. A browser
 * throttles the timers of a hidden page's own thread (Chrome: to one wake-up a minute once the
 * page has been hidden for five minutes), which would let the relay's keepalive timeout end the
 * session of a player who switched tabs, and its resume grace pass; a
 * dedicated worker's timers are not throttled so, and its message wakes the page. So where the
 * page's transport worker runs (`useWorker` in a browser), the timer runs there; elsewhere (Node,
 * `worker: false`, a worker that could not start or died) it is setTimeout.
 */
export function pageTimer(useWorker: boolean, WS: WebSocketConstructor | undefined): (fn: () => void, ms: number) => CancelTimer {
  const viaWorker = useWorker && WS === undefined;
  return (fn, ms) => {
    const h = viaWorker ? hub : null;
    if (h != null && h.running) return h.wake(fn, ms);
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  };
}

let hub: WorkerHub | null | undefined;

function workerHub(): WorkerHub | null {
  if (hub === undefined) {
    try {
      hub = typeof Worker === "function" ? new WorkerHub(new URL("./relay-worker.js", import.meta.url)) : null;
    } catch {
      hub = null; // e.g. a Content-Security-Policy without worker-src
    }
  }
  return hub;
}

/** The transport in the page's worker; in-thread if the worker did not start. */
class WorkerChannel implements Channel {
  stats: ChannelStats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  private inThread: Channel | null = null;
  private readonly id: number;
  private queued: Uint8Array[] = [];
  private endCode: number | null = null;
  private readonly socketClosed: Promise<void>;
  private closeSocket!: () => void;
  private gone = false;

  constructor(
    private readonly hub: WorkerHub,
    request: ChannelRequest,
    private readonly events: ChannelEvents,
  ) {
    this.id = hub.id();
    this.socketClosed = new Promise((resolve) => (this.closeSocket = resolve));
    void hub.ready.then((ok) => {
      if (ok) {
        hub.channels.set(this.id, this);
        hub.post({ t: "open", id: this.id, request });
        if (this.queued.length > 0) hub.post({ t: "send", id: this.id, pts: this.queued });
        if (this.endCode !== null) hub.post({ t: "end", id: this.id, code: this.endCode });
      } else {
        this.inThread = openSocketChannel(WebSocket, request, events);
        this.stats = this.inThread.stats;
        if (this.queued.length > 0) this.inThread.send(this.queued);
        if (this.endCode !== null) void this.inThread.end(this.endCode).then(this.closeSocket);
      }
      this.queued = [];
    });
  }

  fromWorker(m: FromWorker): void {
    if (m.t === "data") {
      this.stats = m.stats;
      if (!this.gone) this.events.plaintexts(m.pts);
    } else if (m.t === "closed") {
      this.stats = m.stats;
      this.hub.channels.delete(this.id);
      this.closeSocket();
      if (m.cause !== null && !this.gone) {
        this.gone = true;
        this.events.closed(m.cause, m.close);
      }
    }
  }

  send(pts: Uint8Array[]): void {
    if (this.inThread !== null) this.inThread.send(pts);
    else if (this.hub.channels.has(this.id)) this.hub.post({ t: "send", id: this.id, pts });
    else this.queued.push(...pts);
  }

  async end(code: number): Promise<void> {
    this.gone = true;
    if (this.inThread !== null) return this.inThread.end(code);
    if (this.hub.channels.has(this.id)) this.hub.post({ t: "end", id: this.id, code });
    else this.endCode = code;
    return this.socketClosed;
  }
}

/**
 * A channel for `request`: in the page's worker when `useWorker` and the environment has Worker
 * (browsers), else on this thread with `WS`.
 */
export function openChannel(
  request: ChannelRequest,
  events: ChannelEvents,
  WS: WebSocketConstructor | undefined,
  useWorker: boolean,
): Channel {
  const h = useWorker && WS === undefined ? workerHub() : null;
  if (h !== null) return new WorkerChannel(h, request, events);
  const ctor = WS ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (ctor === undefined) {
    throw new TypeError("no WebSocket: use Node 22+, node --experimental-websocket, or options.WebSocket");
  }
  return openSocketChannel(ctor, request, events);
}
