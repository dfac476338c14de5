/**
 * The client in Node, driven over JSON lines by tests/js/test_node_client.py (see rpc.ts): each
 * op acts on one named client; every event of every client is printed as
 * `{"event": type, "client": name, ...fields}`.
 */

import { fromHex } from "../src/bytes.js";
import { connect, relayUrl, type RelayClient, type RelayEventName } from "../src/index.js";
import { emit, serve } from "./rpc.js";

const EVENTS: RelayEventName[] = ["joined", "left", "profile", "message", "error", "closing", "reconnecting", "resumed", "closed"];
const clients = new Map<string, RelayClient>();

function client(name: string): RelayClient {
  const c = clients.get(name);
  if (c === undefined) throw new Error(`no client ${name}`);
  return c;
}

function snapshot(c: RelayClient): Record<string, unknown> {
  return {
    connectionId: c.connectionId,
    resumed: c.resumed,
    members: [...c.members.values()].map((m) => [m.connectionId, m.userId, m.profile]),
    limits: c.limits,
    rtt: c.rtt ?? null,
    closed: c.closed,
    stats: c.stats,
    resumeToken: c.resumeToken,
  };
}

serve(
  {
    /** At `url`, or at `host` and `port` as a room record gives them (relayUrl, `tls` for wss://). */
    async connect(a) {
      const url = a["url"] ?? relayUrl(a["host"], a["port"], { tls: a["tls"] ?? false });
      const c = await connect(url, a["key"], a["userId"], {
        profile: fromHex(a["profile"] ?? ""),
        accessToken: a["accessToken"] ?? null,
        resumeToken: a["resumeToken"] ? fromHex(a["resumeToken"]) : null,
        timeoutMs: a["timeoutMs"] ?? 5000,
      });
      clients.set(a["name"], c);
      for (const type of EVENTS) c.on(type, (e) => emit({ event: type, client: a["name"], ...e }));
      return snapshot(c);
    },
    send: (a) => client(a["name"]).send(fromHex(a["data"]), a["targets"] ?? undefined),
    updateProfile: (a) => client(a["name"]).updateProfile(fromHex(a["profile"])),
    state: (a) => snapshot(client(a["name"])),
    async close(a) {
      await client(a["name"]).close();
      return snapshot(client(a["name"]));
    },
  },
  async () => {
    await Promise.all([...clients.values()].map((c) => c.close()));
  },
);
