/**
 * tests/vectors/*.json (docs/protocol.md section 11) under Node's test runner: the key
 * schedule, the header, every message's msgpack bytes and one whole session start, byte for byte.
 */

import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Encoder } from "@msgpack/msgpack";

import { fromHex, toBase64Url, toHex } from "../src/bytes.js";
import {
  ACCEPT,
  aeadKey,
  buildHello,
  Code,
  decodeHeader,
  decodeRelayMessages,
  decodeRoomKey,
  deriveHelloKey,
  derivePsk,
  deriveSessionKeys,
  encodeClientMessage,
  encodeHeader,
  ephemeralFromPrivate,
  helloPadding,
  nonce,
  open,
  openAccept,
  ProtocolError,
  sealData,
  x25519,
  type ClientMessage,
  type RelayMessage,
} from "../src/protocol.js";

const VECTORS = new URL("../../../../tests/vectors/", import.meta.url);

function text(name: string): string {
  return readFileSync(new URL(name, VECTORS), "utf8");
}

function load(name: string): Record<string, any> {
  return JSON.parse(text(name));
}

/** A JSON integer field read exactly (JSON.parse rounds integers above 2^53). */
function exact(json: string, field: string): bigint {
  return BigInt(new RegExp(`"${field}": (\\d+)`).exec(json)![1]!);
}

/** A vector's array with {"bin": hex} as bytes. */
function unhex(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(unhex);
  if (v !== null && typeof v === "object" && "bin" in v) return fromHex((v as { bin: string }).bin);
  return v;
}

const keys = load("keys.json");
const header = load("header.json");
const messages = load("messages.json");
const handshake = load("handshake.json");

test("room key text decodes with and without padding, 32 bytes only", () => {
  assert.equal(toHex(decodeRoomKey(keys.room_key_text)), keys.room_key);
  assert.equal(toHex(decodeRoomKey(keys.room_key_text + "=")), keys.room_key);
  assert.equal(toBase64Url(fromHex(keys.room_key)), keys.room_key_text);
  assert.throws(() => decodeRoomKey(keys.room_key_text.slice(0, 40)), TypeError);
  assert.throws(() => decodeRoomKey(toBase64Url(new Uint8Array(33))), TypeError);
  assert.throws(() => decodeRoomKey("not*base64url"), TypeError);
});

test("key schedule", async () => {
  const psk = await derivePsk(fromHex(keys.room_key));
  assert.equal(toHex(psk), keys.psk);
  const client = await ephemeralFromPrivate(fromHex(keys.client_private));
  const relay = await ephemeralFromPrivate(fromHex(keys.relay_private));
  assert.equal(toHex(client.publicKey), keys.client_public);
  assert.equal(toHex(relay.publicKey), keys.relay_public);
  assert.equal(toHex(await deriveHelloKey(psk, client.publicKey)), keys.hello_key);
  const dh = await x25519(client.privateKey, relay.publicKey);
  assert.equal(toHex(dh), keys.dh);
  assert.equal(toHex(await x25519(relay.privateKey, client.publicKey)), keys.dh);
  const s = await deriveSessionKeys(psk, dh, client.publicKey, relay.publicKey);
  assert.equal(toHex(s.c2s), keys.k_c2s);
  assert.equal(toHex(s.s2c), keys.k_s2c);
});

test("an all-zero X25519 output is refused", async () => {
  const client = await ephemeralFromPrivate(fromHex(keys.client_private));
  await assert.rejects(x25519(client.privateKey, new Uint8Array(32)), ProtocolError);
});

test("header and nonce", () => {
  const f = header.fields;
  const counter = exact(text("header.json"), "counter");
  assert.equal(counter, 0x0102030405060708n);
  const bytes = encodeHeader(f.type, f.session_id, counter);
  assert.equal(toHex(bytes), header.hex);
  assert.deepEqual(decodeHeader(fromHex(header.hex)), {
    version: f.version,
    type: f.type,
    flags: f.flags,
    sessionId: f.session_id,
    counter,
  });
  assert.equal(toHex(nonce(counter)), header.nonce_hex);
  assert.equal(decodeHeader(new Uint8Array(15)), null);
});

/** The vectors' client messages as the encoder's input. */
function clientMessage(a: unknown[]): ClientMessage {
  const code = a[0] as number;
  switch (code) {
    case Code.Join:
      return { code, userId: a[1] as string, profile: a[2] as Uint8Array, accessToken: a[3] as string | null, resumeToken: a[4] as Uint8Array | null };
    case Code.Send:
      return { code, data: a[1] as Uint8Array, targets: a[2] as number[] | null };
    case Code.Profile:
      return { code, profile: a[1] as Uint8Array };
    case Code.Ping:
      return { code, pingId: a[1] as number, clientTimeUs: a[2] as number };
    case Code.PathPong:
      return { code, challenge: a[1] as number };
    case Code.Bye:
    case Code.Sync:
      return { code };
  }
  throw new Error(`no client message ${code}`);
}

test("client messages encode to the vectors' msgpack", () => {
  for (const v of messages.client_to_relay) {
    const a = unhex(v.array) as unknown[];
    // JSON cannot hold the 64-bit challenge exactly: take it from the msgpack bytes' text.
    if (a[0] === Code.PathPong) a[1] = BigInt("0x" + v.msgpack.slice(6));
    assert.equal(toHex(encodeClientMessage(clientMessage(a))), v.msgpack, v.name);
  }
  const c = messages.coalesced;
  const both = [
    encodeClientMessage({ code: Code.Send, data: new Uint8Array([0x61]), targets: null }),
    encodeClientMessage({ code: Code.Ping, pingId: 1, clientTimeUs: 2 }),
  ];
  assert.equal(both.map(toHex).join(""), c.plaintext);
});

/** A decoded relay message back as the vector's array (its fields are in array order). */
function asArray(m: RelayMessage): unknown[] {
  if (m.code !== Code.Welcome) return Object.values(m);
  const limits = Object.values(m.limits);
  const members = m.members.map((x) => Object.values(x));
  const numbered = m.parts > 0 ? [m.part, m.parts] : [];
  return [m.code, m.connectionId, m.resumeToken, limits, members, m.more, m.resumed, ...numbered];
}

test("relay messages decode to the vectors' arrays", () => {
  for (const v of messages.relay_to_client) {
    const got = decodeRelayMessages(fromHex(v.msgpack));
    assert.equal(got.length, 1, v.name);
    const expected = unhex(v.array) as unknown[];
    if (expected[0] === Code.PathPing) expected[1] = BigInt("0x" + v.msgpack.slice(6));
    assert.deepEqual(asArray(got[0]!), expected, v.name);
  }
});

test("a malformed message drops the whole packet; unknown codes and extra elements are ignored", () => {
  const message = messages.relay_to_client.find((v: { name: string }) => v.name === "MESSAGE").msgpack;
  // [20, 1, "hello"]: data is a str, not bin
  assert.throws(() => decodeRelayMessages(fromHex(message + "9314" + "01a568656c6c6f")), ProtocolError);
  assert.throws(() => decodeRelayMessages(fromHex(message + "9214" + "01")), ProtocolError); // too short
  assert.throws(() => decodeRelayMessages(fromHex(message + "05")), ProtocolError); // not an array
  assert.throws(() => decodeRelayMessages(fromHex(message.slice(0, -2))), ProtocolError); // truncated
  assert.throws(() => decodeRelayMessages(new Uint8Array(0)), ProtocolError);
  // [99, 1] (unknown) then MESSAGE with an extra trailing element
  const got = decodeRelayMessages(fromHex("926301" + "94" + message.slice(2) + "c0"));
  assert.deepEqual(got.map(asArray), [[Code.Message, 1, new TextEncoder().encode("hello")]]);
});

test("WELCOME limits: extra trailing elements are ignored, fewer than 7 are malformed", () => {
  const encode = (limits: unknown[]): Uint8Array =>
    new Encoder().encode([16, 1, new Uint8Array(16), limits, [], false, false, 0, 1]);
  const limits = [32, 16384, 1024, 100, 65536, 10000, 15000];
  const [w] = decodeRelayMessages(encode([...limits, "a later revision's", [1, 2]]));
  assert.ok(w !== undefined && w.code === Code.Welcome);
  assert.deepEqual(Object.values(w.limits), limits);
  assert.throws(() => decodeRelayMessages(encode(limits.slice(0, 6))), ProtocolError);
});

test("floats are refused where the protocol has integers, even whole ones", () => {
  // [20, 1.0 as float 64, bin "x"], then [18, 2, 1.0 as float 32]
  assert.throws(() => decodeRelayMessages(fromHex("9314cb3ff0000000000000c40178")), ProtocolError);
  assert.throws(() => decodeRelayMessages(fromHex("931202ca3f800000")), ProtocolError);
  assert.deepEqual(decodeRelayMessages(fromHex("931401c40178")).map(asArray), [[Code.Message, 1, new Uint8Array([0x78])]]);
});

test("one session start, byte for byte", async () => {
  const psk = await derivePsk(fromHex(handshake.room_key));
  const client = await ephemeralFromPrivate(fromHex(handshake.client_private));
  const helloKey = await aeadKey(await deriveHelloKey(psk, client.publicKey));
  assert.equal(toHex(await buildHello(helloKey, client.publicKey, helloPadding(handshake.hello_pad_to))), handshake.hello);
  assert.equal(toHex(await buildHello(helloKey, client.publicKey)), handshake.hello_ws);

  const accepted = await openAccept(fromHex(handshake.accept), psk, client);
  assert.equal(accepted.sessionId, handshake.session_id);
  assert.equal(toHex(accepted.keys.c2s), keys.k_c2s);
  const bad = fromHex(handshake.accept);
  bad[bad.length - 1]! ^= 1;
  await assert.rejects(openAccept(bad, psk, client), ProtocolError);
  assert.equal(decodeHeader(fromHex(handshake.accept))!.type, ACCEPT);

  const c2s = await aeadKey(accepted.keys.c2s);
  const join = encodeClientMessage({ code: Code.Join, userId: "alice", profile: fromHex("0102"), accessToken: null, resumeToken: null });
  assert.equal(toHex(join), handshake.join_plaintext);
  assert.equal(toHex(await sealData(c2s, accepted.sessionId, 1, join)), handshake.join_packet);

  const packet = fromHex(handshake.welcome_packet);
  const s2c = await aeadKey(accepted.keys.s2c);
  const pt = await open(s2c, 1, packet.subarray(16), packet.subarray(0, 16));
  assert.equal(toHex(pt), handshake.welcome_plaintext);
  const [welcome] = decodeRelayMessages(pt);
  assert.equal(welcome!.code, Code.Welcome);
  await assert.rejects(open(s2c, 2, packet.subarray(16), packet.subarray(0, 16))); // wrong nonce
});
