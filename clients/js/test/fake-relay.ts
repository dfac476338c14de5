/**
 * A relay in this process for the client's unit tests (session.test.ts): a WebSocket
 * constructor (`options.WebSocket`) whose sockets do the relay's side of the handshake with
 * protocol.ts, decode what the client sends, and let a test send any message (well-formed or
 * not) and close with any code. No network, no timers beyond the client's own.
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

import { concat } from "../src/bytes.js";
import type { WebSocketConstructor } from "../src/channel.js";
import {
  ACCEPT,
  aeadKey,
  deriveHelloKey,
  deriveSessionKeys,
  derivePsk,
  encodeHeader,
  generateEphemeral,
  HEADER_SIZE,
  KEY_SIZE,
  open,
  openPacket,
  seal,
  sealData,
  x25519,
} from "../src/protocol.js";

export const ROOM_KEY = new Uint8Array(32).fill(7);
/** WELCOME's limits: max players, payload, profile, messages/s, bytes/s, keepalive, grace. */
export const LIMITS = [32, 16384, 1024, 100, 65536, 10_000, 15_000];

const encoder = new Encoder({ useBigInt64: true });

/** A WELCOME array (one whole snapshot unless `part`/`parts` say otherwise). */
export function welcome(
  connectionId: number,
  token: Uint8Array,
  members: [number, string, Uint8Array][] = [],
  opts: { limits?: unknown[]; part?: number; parts?: number; resumed?: boolean } = {},
): unknown[] {
  const parts = opts.parts ?? 1;
  const part = opts.part ?? 0;
  return [16, connectionId, token, opts.limits ?? LIMITS, members, part < parts - 1, opts.resumed ?? false, part, parts];
}

export function token(n: number): Uint8Array {
  return new Uint8Array(16).fill(n);
}

/** Resolves once `check()` holds (polled every 5 ms), or fails after `ms`. */
export async function until(check: () => boolean, ms = 2000, what = "condition"): Promise<void> {
  const end = performance.now() + ms;
  while (!check()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Listener = (ev: unknown) => void;

/** One connection, from the relay's side. */
export class FakeSocket {
  binaryType = "blob";
  readyState = 0;
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: ArrayBuffer }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  /** Every message the client sent on this connection, decoded, in order. */
  readonly received: unknown[][] = [];
  /** The DATA packets those came in. */
  packets = 0;
  private readonly closeListeners: Listener[] = [];
  private rx: Promise<void> = Promise.resolve();
  private tx: Promise<void> = Promise.resolve();
  private sessionId = 0x0102_0304;
  private rxKey: CryptoKey | null = null;
  private txKey: CryptoKey | null = null;
  private counter = 0;

  constructor(
    private readonly relay: FakeRelay,
    readonly url: string,
  ) {
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }

  addEventListener(type: string, listener: Listener): void {
    if (type === "close") this.closeListeners.push(listener);
  }

  /** From the client. */
  send(data: Uint8Array): void {
    const packet = new Uint8Array(data); // its own copy
    this.rx = this.rx.then(() => (this.rxKey === null ? this.hello(packet) : this.data(packet)));
  }

  /** The client closes. */
  close(code = 1000): void {
    this.closed(code, "");
  }

  /** Messages in one DATA packet, in order. */
  push(...messages: unknown[][]): void {
    const pt = concat(...messages.map((m) => encoder.encode(m)));
    const counter = ++this.counter;
    this.tx = this.tx.then(async () => {
      const packet = await sealData(this.txKey!, this.sessionId, counter, pt);
      if (this.readyState === 1) this.onmessage?.({ data: packet.slice().buffer });
    });
  }

  /** The relay closes with `code` and `reason` (after what it already pushed). */
  drop(code: number, reason = ""): void {
    void this.tx.then(() => this.closed(code, reason));
  }

  /** The messages of one type code the client sent here. */
  sent(code: number): unknown[][] {
    return this.received.filter((m) => m[0] === code);
  }

  private closed(code: number, reason: string): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    setTimeout(() => {
      this.onclose?.({ code, reason });
      for (const l of this.closeListeners) l({ code, reason });
    }, 0);
  }

  private async hello(packet: Uint8Array): Promise<void> {
    const psk = await this.relay.psk;
    const eC = packet.slice(HEADER_SIZE, HEADER_SIZE + KEY_SIZE);
    const helloKey = await aeadKey(await deriveHelloKey(psk, eC));
    await open(helloKey, 0, packet.subarray(HEADER_SIZE + KEY_SIZE), packet.subarray(0, HEADER_SIZE + KEY_SIZE));
    const eph = await generateEphemeral();
    const keys = await deriveSessionKeys(psk, await x25519(eph.privateKey, eC), eC, eph.publicKey);
    this.rxKey = await aeadKey(keys.c2s);
    this.txKey = await aeadKey(keys.s2c);
    const aad = concat(encodeHeader(ACCEPT, this.sessionId, 0), eph.publicKey);
    const accept = concat(aad, await seal(this.txKey, 0, new Uint8Array(0), aad));
    this.onmessage?.({ data: accept.slice().buffer });
  }

  private async data(packet: Uint8Array): Promise<void> {
    const pt = new Uint8Array(await openPacket(this.rxKey!, packet));
    this.packets++;
    for (const m of new Decoder({ useBigInt64: true }).decodeMulti(pt)) {
      const message = m as unknown[];
      this.received.push(message);
      this.relay.onMessage(this, message);
    }
  }
}

/** The relay: its sockets, in the order the client opened them, and how it answers. */
export class FakeRelay {
  readonly sockets: FakeSocket[] = [];
  readonly psk = derivePsk(ROOM_KEY);
  /** How JOINs are answered: a whole WELCOME for connection 1 by default. */
  onJoin: (s: FakeSocket, join: unknown[], index: number) => void = (s) => s.push(welcome(1, token(1)));
  /** PINGs are answered with PONG unless false. */
  pong = true;
  /** Any other message from the client. */
  onOther: (s: FakeSocket, m: unknown[]) => void = () => {};
  readonly WebSocket: WebSocketConstructor;

  constructor() {
    const relay = this;
    this.WebSocket = function (url: string) {
      const socket = new FakeSocket(relay, url);
      relay.sockets.push(socket);
      return socket;
    } as unknown as WebSocketConstructor;
  }

  get last(): FakeSocket {
    return this.sockets[this.sockets.length - 1]!;
  }

  onMessage(s: FakeSocket, m: unknown[]): void {
    if (m[0] === 1) this.onJoin(s, m, this.sockets.indexOf(s));
    else if (m[0] === 4 && this.pong) s.push([21, m[1], m[2]]);
    else this.onOther(s, m);
  }
}
