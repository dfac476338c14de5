/**
 * The relay wire protocol, version 1 (docs/protocol.md), sans I/O: the key schedule, packets,
 * and messages. Crypto is WebCrypto (`crypto.subtle`: browsers and Node), msgpack is
 * @msgpack/msgpack. Section numbers below are the document's.
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

import { concat, fromBase64Url, utf8 } from "./bytes.js";

export const VERSION = 1;
export const HELLO = 1;
export const ACCEPT = 2;
export const DATA = 3;
export const HEADER_SIZE = 16;
export const TAG_SIZE = 16;
export const KEY_SIZE = 32;
/** HELLO: header, e_c, tag (section 4.1). */
export const HELLO_MIN = HEADER_SIZE + KEY_SIZE + TAG_SIZE;
/** ACCEPT: header, e_s, tag of an empty plaintext (section 4.2). */
export const ACCEPT_SIZE = HEADER_SIZE + KEY_SIZE + TAG_SIZE;
/** The largest packet over WebSocket (section 4.3). */
export const WS_MAX_PACKET = 65536;
/** The largest plaintext of one DATA packet over WebSocket. */
export const WS_MAX_PLAINTEXT = WS_MAX_PACKET - HEADER_SIZE - TAG_SIZE;
/** The most a member's user id (UTF-8) and profile may hold together (section 9): one member's
 * WELCOME entry must fit a UDP datagram. The relay refuses more with ERROR 5. */
export const WELCOME_ENTRY_BYTES = 1083;
/** WELCOME's `limits` array: its first 7 elements (later revisions may append more). */
const LIMITS_LENGTH = 7;

/** Message type codes (section 5). */
export enum Code {
  Join = 1,
  Send = 2,
  Profile = 3,
  Ping = 4,
  Bye = 5,
  PathPong = 6,
  Sync = 7,
  Welcome = 16,
  MemberJoin = 17,
  Leave = 18,
  MemberProfile = 19,
  Message = 20,
  Pong = 21,
  Error = 22,
  Closing = 23,
  PathPing = 24,
}

/** LEAVE reasons (section 5.3). */
export const LeaveReason = { Left: 1, Timeout: 2, Kicked: 3, Disconnected: 4 } as const;
/** CLOSING reasons (section 5.3); an unknown reason is treated like Shutdown. */
export const CloseReason = { Deleted: 1, Idle: 2, Lifetime: 3, Kicked: 4, Shutdown: 5, CapExceeded: 6 } as const;
/** ERROR codes (section 5.3). */
export const ErrorCode = {
  BadRequest: 1,
  RateLimited: 2,
  RoomFull: 3,
  PayloadTooLarge: 4,
  ProfileTooLarge: 5,
  Unauthorized: 6,
  Overloaded: 7,
  NotJoined: 8,
} as const;

/** A packet or message that breaks the protocol: the receiver drops it (section 4.4, 5). */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

// --- the room key and the key schedule (sections 2, 3) ---------------------------------------

/** WebCrypto; browsers offer it only in secure contexts (https, or http on localhost/127.0.0.1). */
function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (s === undefined) {
    throw new Error("WebCrypto (crypto.subtle) is unavailable: serve the page over https or from localhost");
  }
  return s;
}
const EMPTY = new Uint8Array(0);
const LABEL_PSK = utf8.encode("gs2relay/1 psk");
const LABEL_HELLO = utf8.encode("gs2relay/1 hello");
const LABEL_SESSION = utf8.encode("gs2relay/1 session");
/** PKCS#8 wrapping of a raw X25519 private key (RFC 8410), for fixed keys (tests, vectors). */
const X25519_PKCS8_PREFIX = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
);

/** The room record's `encryptionKey` (base64url, padded or not) as its 32 bytes. */
export function decodeRoomKey(text: string): Uint8Array {
  let key: Uint8Array;
  try {
    key = fromBase64Url(text.trim());
  } catch {
    throw new TypeError("room key is not base64url");
  }
  if (key.length !== KEY_SIZE) throw new TypeError(`room key must decode to 32 bytes, not ${key.length}`);
  return key;
}

/** HKDF-SHA256 (RFC 5869). */
export async function hkdf(salt: Uint8Array, ikm: Uint8Array, info: Uint8Array, length: number): Promise<Uint8Array> {
  const key = await subtle().importKey("raw", ikm as BufferSource, "HKDF", false, ["deriveBits"]);
  const bits = await subtle().deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: salt as BufferSource, info: info as BufferSource },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

export function derivePsk(roomKey: Uint8Array): Promise<Uint8Array> {
  return hkdf(EMPTY, roomKey, LABEL_PSK, 32);
}

export function deriveHelloKey(psk: Uint8Array, clientPublic: Uint8Array): Promise<Uint8Array> {
  return hkdf(clientPublic, psk, LABEL_HELLO, 32);
}

export interface SessionKeys {
  /** Client to relay. */
  c2s: Uint8Array;
  /** Relay to client. */
  s2c: Uint8Array;
}

export async function deriveSessionKeys(
  psk: Uint8Array,
  dh: Uint8Array,
  clientPublic: Uint8Array,
  relayPublic: Uint8Array,
): Promise<SessionKeys> {
  const okm = await hkdf(psk, dh, concat(LABEL_SESSION, clientPublic, relayPublic), 64);
  return { c2s: okm.slice(0, 32), s2c: okm.slice(32, 64) };
}

export interface Ephemeral {
  privateKey: CryptoKey;
  publicKey: Uint8Array;
}

/** A fresh X25519 key pair (the private half never leaves WebCrypto). */
export async function generateEphemeral(): Promise<Ephemeral> {
  const pair = (await subtle().generateKey({ name: "X25519" }, false, ["deriveBits"])) as CryptoKeyPair;
  return { privateKey: pair.privateKey, publicKey: new Uint8Array(await subtle().exportKey("raw", pair.publicKey)) };
}

/** An X25519 key pair from fixed private bytes (test vectors). */
export async function ephemeralFromPrivate(raw: Uint8Array): Promise<Ephemeral> {
  const privateKey = await subtle().importKey("pkcs8", concat(X25519_PKCS8_PREFIX, raw) as BufferSource, { name: "X25519" }, true, [
    "deriveBits",
  ]);
  const jwk = await subtle().exportKey("jwk", privateKey);
  return { privateKey, publicKey: fromBase64Url(jwk.x ?? "") };
}

/** X25519(private, peer public); an all-zero result (a low-order peer key) is refused (section 3). */
export async function x25519(privateKey: CryptoKey, peerPublic: Uint8Array): Promise<Uint8Array> {
  let dh: Uint8Array;
  try {
    const peer = await subtle().importKey("raw", peerPublic as BufferSource, { name: "X25519" }, false, []);
    dh = new Uint8Array(await subtle().deriveBits({ name: "X25519", public: peer }, privateKey, 256));
  } catch {
    throw new ProtocolError("X25519 failed (low-order or invalid public key)");
  }
  if (dh.every((b) => b === 0)) throw new ProtocolError("X25519 output is all zero");
  return dh;
}

// --- packets (section 4) --------------------------------------------------------------------

export interface Header {
  version: number;
  type: number;
  flags: number;
  sessionId: number;
  /** The AEAD nonce counter, all 64 bits. */
  counter: bigint;
}

function setCounter(v: DataView, at: number, counter: number | bigint): void {
  v.setBigUint64(at, BigInt(counter));
}

export function encodeHeader(type: number, sessionId: number, counter: number | bigint): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  const v = new DataView(out.buffer);
  v.setUint8(0, VERSION);
  v.setUint8(1, type);
  v.setUint16(2, 0);
  v.setUint32(4, sessionId);
  setCounter(v, 8, counter);
  return out;
}

/** The header's fields, or null for a packet too short to hold one. */
export function decodeHeader(packet: Uint8Array): Header | null {
  if (packet.length < HEADER_SIZE) return null;
  const v = new DataView(packet.buffer, packet.byteOffset, HEADER_SIZE);
  return {
    version: v.getUint8(0),
    type: v.getUint8(1),
    flags: v.getUint16(2),
    sessionId: v.getUint32(4),
    counter: v.getBigUint64(8),
  };
}

/** The AEAD nonce: 4 zero bytes, then the 8-byte counter. */
export function nonce(counter: number | bigint): Uint8Array {
  const out = new Uint8Array(12);
  setCounter(new DataView(out.buffer), 4, counter);
  return out;
}

/** An AES-256-GCM key for one direction of one session (or the HELLO key). */
export function aeadKey(raw: Uint8Array): Promise<CryptoKey> {
  return subtle().importKey("raw", raw as BufferSource, "AES-GCM", false, ["encrypt", "decrypt"]);
}

export async function seal(key: CryptoKey, counter: number | bigint, plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
  const ct = await subtle().encrypt(
    { name: "AES-GCM", iv: nonce(counter) as BufferSource, additionalData: aad as BufferSource, tagLength: 128 },
    key,
    plaintext as BufferSource,
  );
  return new Uint8Array(ct);
}

/** The plaintext, or a rejected promise when the tag does not verify. */
export async function open(key: CryptoKey, counter: number | bigint, ciphertext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
  const pt = await subtle().decrypt(
    { name: "AES-GCM", iv: nonce(counter) as BufferSource, additionalData: aad as BufferSource, tagLength: 128 },
    key,
    ciphertext as BufferSource,
  );
  return new Uint8Array(pt);
}

/** HELLO (section 4.1): `padding` zero bytes of plaintext (none needed over WebSocket). */
export async function buildHello(helloKey: CryptoKey, clientPublic: Uint8Array, padding = 0): Promise<Uint8Array> {
  const aad = concat(encodeHeader(HELLO, 0, 0), clientPublic);
  return concat(aad, await seal(helloKey, 0, new Uint8Array(padding), aad));
}

/** Padding that makes a HELLO `size` bytes long (1200 over UDP). */
export function helloPadding(size: number): number {
  return Math.max(0, size - HELLO_MIN);
}

export interface Accepted {
  sessionId: number;
  keys: SessionKeys;
}

/** Checks an ACCEPT (section 4.2) and derives the session's keys; throws ProtocolError if it is not one. */
export async function openAccept(
  packet: Uint8Array,
  psk: Uint8Array,
  ephemeral: Ephemeral,
): Promise<Accepted> {
  const h = decodeHeader(packet);
  if (h === null || packet.length < ACCEPT_SIZE || h.version !== VERSION || h.type !== ACCEPT || h.flags !== 0) {
    throw new ProtocolError("not an ACCEPT");
  }
  if (h.sessionId === 0 || h.counter !== 0n) throw new ProtocolError("ACCEPT with session 0 or a counter");
  const relayPublic = packet.slice(HEADER_SIZE, HEADER_SIZE + KEY_SIZE);
  const dh = await x25519(ephemeral.privateKey, relayPublic);
  const keys = await deriveSessionKeys(psk, dh, ephemeral.publicKey, relayPublic);
  const aad = packet.subarray(0, HEADER_SIZE + KEY_SIZE);
  try {
    await open(await aeadKey(keys.s2c), 0, packet.subarray(HEADER_SIZE + KEY_SIZE), aad);
  } catch {
    throw new ProtocolError("ACCEPT does not authenticate");
  }
  return { sessionId: h.sessionId, keys };
}

/** Opens a DATA packet's ciphertext; the nonce is taken from the header's counter bytes. */
export function openPacket(key: CryptoKey, packet: Uint8Array): Promise<ArrayBuffer> {
  const iv = new Uint8Array(12);
  iv.set(packet.subarray(8, HEADER_SIZE), 4);
  return subtle().decrypt(
    { name: "AES-GCM", iv, additionalData: packet.subarray(0, HEADER_SIZE) as BufferSource, tagLength: 128 },
    key,
    packet.subarray(HEADER_SIZE) as BufferSource,
  );
}

/** A DATA packet (section 4.3). */
export async function sealData(key: CryptoKey, sessionId: number, counter: number | bigint, plaintext: Uint8Array): Promise<Uint8Array> {
  const header = encodeHeader(DATA, sessionId, counter);
  return concat(header, await seal(key, counter, plaintext, header));
}

// --- messages (section 5) -------------------------------------------------------------------

/** A msgpack uint the decoder may hand back as a bigint (uint 64 encoding). */
export type Uint = number | bigint;

export type ClientMessage =
  | { code: Code.Join; userId: string; profile: Uint8Array; accessToken: string | null; resumeToken: Uint8Array | null }
  | { code: Code.Send; data: Uint8Array; targets: readonly number[] | null }
  | { code: Code.Profile; profile: Uint8Array }
  | { code: Code.Ping; pingId: number; clientTimeUs: number }
  | { code: Code.Bye }
  | { code: Code.PathPong; challenge: Uint }
  | { code: Code.Sync };

export interface WireMember {
  connectionId: number;
  userId: string;
  profile: Uint8Array;
}

/** WELCOME's `limits` (section 5.2); 0 means unlimited for the two rates. */
export interface Limits {
  maxPlayers: number;
  maxPayload: number;
  maxProfile: number;
  messagesPerSecond: number;
  bytesPerSecond: number;
  keepaliveTimeoutMs: number;
  resumeGraceMs: number;
}

export type RelayMessage =
  | {
      code: Code.Welcome;
      connectionId: number;
      resumeToken: Uint8Array;
      limits: Limits;
      members: WireMember[];
      more: boolean;
      resumed: boolean;
      /** This part's number and how many parts the snapshot has (revision 2); 0 parts: a
       * revision-1 relay, whose parts arrive in order with `more` on all but the last. */
      part: number;
      parts: number;
    }
  | { code: Code.MemberJoin; connectionId: number; userId: string; profile: Uint8Array }
  | { code: Code.Leave; connectionId: number; reason: number }
  | { code: Code.MemberProfile; connectionId: number; profile: Uint8Array }
  | { code: Code.Message; sender: number; data: Uint8Array }
  | { code: Code.Pong; pingId: number; clientTimeUs: number }
  | { code: Code.Error; errorCode: number; text: string }
  | { code: Code.Closing; reason: number; text: string }
  | { code: Code.PathPing; challenge: Uint };

// uint64 values must be bigints for the encoder to write them as msgpack uint 64: with
// useBigInt64 it would write a large *number* as a float.
const encoder = new Encoder({ useBigInt64: true });
const decoder = new Decoder({ useBigInt64: true });

/** A msgpack float: boxed, so that no field check (uint, str, ...) takes it for an integer. */
class Float {
  constructor(readonly value: number) {}
}
// The protocol has no floats, and a float 3.0 would decode to the number 3 that uint() accepts.
// @msgpack/msgpack has no option for this: its two float readers are replaced on our instance
// (the version is pinned in package.json; the "floats are refused" test fails if they move).
for (const name of ["readF32", "readF64"] as const) {
  const reader = decoder as unknown as Record<typeof name, () => unknown>;
  const read = reader[name].bind(decoder);
  reader[name] = () => new Float(read() as number);
}

function wideUint(n: number): number | bigint {
  return n < 0x1_0000_0000 ? n : BigInt(n);
}

/** One client message as msgpack (use_bin_type: byte fields are `bin`). */
export function encodeClientMessage(m: ClientMessage): Uint8Array {
  switch (m.code) {
    case Code.Join:
      return encoder.encode([m.code, m.userId, m.profile, m.accessToken, m.resumeToken]);
    case Code.Send:
      return encoder.encode([m.code, m.data, m.targets === null ? null : [...m.targets]]);
    case Code.Profile:
      return encoder.encode([m.code, m.profile]);
    case Code.Ping:
      return encoder.encode([m.code, wideUint(m.pingId), wideUint(m.clientTimeUs)]);
    case Code.PathPong:
      return encoder.encode([m.code, typeof m.challenge === "bigint" ? m.challenge : wideUint(m.challenge)]);
    case Code.Bye:
    case Code.Sync:
      return encoder.encode([m.code]);
  }
}

function fail(what: string): never {
  throw new ProtocolError(`malformed message: ${what}`);
}

function uint(v: unknown, what: string): number {
  if (typeof v === "number" && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return fail(what);
}

function wide(v: unknown, what: string): Uint {
  if (typeof v === "bigint" && v >= 0n) return v;
  return uint(v, what);
}

function bin(v: unknown, what: string): Uint8Array {
  return v instanceof Uint8Array ? v : fail(what);
}

function str(v: unknown, what: string): string {
  return typeof v === "string" ? v : fail(what);
}

function bool(v: unknown, what: string): boolean {
  return typeof v === "boolean" ? v : fail(what);
}

function arr(v: unknown, length: number, what: string): unknown[] {
  return Array.isArray(v) && v.length >= length ? v : fail(what);
}

function welcomePart(a: unknown[]): { part: number; parts: number } {
  if (a.length < 9) return { part: 0, parts: 0 };
  const part = uint(a[7], "welcome part");
  const parts = uint(a[8], "welcome parts");
  return part < parts ? { part, parts } : fail("welcome part");
}

function decodeOne(raw: unknown): RelayMessage | null {
  const a = Array.isArray(raw) && raw.length > 0 ? raw : fail("not an array");
  const code = uint(a[0], "type code");
  switch (code) {
    case Code.Welcome: {
      arr(a, 7, "WELCOME");
      // Extra elements are ignored (section 5): a later revision may add limits.
      const l = arr(a[3], LIMITS_LENGTH, "WELCOME limits")
        .slice(0, LIMITS_LENGTH)
        .map((x) => uint(x, "limit"));
      return {
        code,
        connectionId: uint(a[1], "connection id"),
        resumeToken: bin(a[2], "resume token"),
        limits: {
          maxPlayers: l[0]!,
          maxPayload: l[1]!,
          maxProfile: l[2]!,
          messagesPerSecond: l[3]!,
          bytesPerSecond: l[4]!,
          keepaliveTimeoutMs: l[5]!,
          resumeGraceMs: l[6]!,
        },
        members: (Array.isArray(a[4]) ? a[4] : fail("WELCOME members")).map((m: unknown) => {
          const e = arr(m, 3, "member");
          return { connectionId: uint(e[0], "member id"), userId: str(e[1], "user id"), profile: bin(e[2], "profile") };
        }),
        more: bool(a[5], "more"),
        resumed: bool(a[6], "resumed"),
        ...welcomePart(a),
      };
    }
    case Code.MemberJoin:
      arr(a, 4, "JOIN");
      return { code, connectionId: uint(a[1], "connection id"), userId: str(a[2], "user id"), profile: bin(a[3], "profile") };
    case Code.Leave:
      arr(a, 3, "LEAVE");
      return { code, connectionId: uint(a[1], "connection id"), reason: uint(a[2], "reason") };
    case Code.MemberProfile:
      arr(a, 3, "PROFILE");
      return { code, connectionId: uint(a[1], "connection id"), profile: bin(a[2], "profile") };
    case Code.Message:
      arr(a, 3, "MESSAGE");
      return { code, sender: uint(a[1], "sender"), data: bin(a[2], "data") };
    case Code.Pong:
      arr(a, 3, "PONG");
      return { code, pingId: uint(a[1], "ping id"), clientTimeUs: uint(a[2], "client time") };
    case Code.Error:
      arr(a, 3, "ERROR");
      return { code, errorCode: uint(a[1], "error code"), text: str(a[2], "text") };
    case Code.Closing:
      arr(a, 3, "CLOSING");
      return { code, reason: uint(a[1], "reason"), text: str(a[2], "text") };
    case Code.PathPing:
      arr(a, 2, "PING");
      return { code, challenge: wide(a[1], "challenge") };
    default:
      return null; // an unknown type code is ignored (section 5)
  }
}

/**
 * Every relay message in one DATA plaintext, in order. Throws ProtocolError if any of them is
 * malformed: the whole packet is then dropped (section 5).
 */
export function decodeRelayMessages(plaintext: Uint8Array): RelayMessage[] {
  const out: RelayMessage[] = [];
  let raw: unknown[];
  try {
    raw = [...decoder.decodeMulti(plaintext)];
  } catch (e) {
    throw new ProtocolError(`undecodable msgpack: ${String(e)}`);
  }
  if (raw.length === 0) fail("empty plaintext");
  for (const r of raw) {
    const m = decodeOne(r);
    if (m !== null) out.push(m);
  }
  return out;
}
