// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  openSocketChannel
} from "./relay-shared-4GUO7CUI.js";

// src/relay-worker.ts
var scope = globalThis;
var channels = /* @__PURE__ */ new Map();
var wakes = /* @__PURE__ */ new Map();
var outbox = /* @__PURE__ */ new Map();
var flushing = false;
function stats(channel) {
  return { ...channel.stats };
}
function post(id) {
  const out = outbox.get(id);
  if (out === void 0) return;
  outbox.delete(id);
  const transfer = out.pts.map((p) => p.buffer);
  scope.postMessage({ t: "data", id, pts: out.pts, stats: stats(out.channel) }, transfer);
}
function flush() {
  flushing = false;
  for (const id of [...outbox.keys()]) post(id);
}
function timer(m) {
  const id = m.id;
  clearTimeout(wakes.get(id));
  wakes.delete(id);
  if (m.t === "wake") {
    wakes.set(
      id,
      setTimeout(() => {
        wakes.delete(id);
        scope.postMessage({ t: "wake", id });
      }, m.ms)
    );
  }
}
function handle(m) {
  if (m.t === "open") {
    const channel = openSocketChannel(WebSocket, m.request, {
      plaintexts: (pts) => {
        const out = outbox.get(m.id);
        if (out === void 0) outbox.set(m.id, { channel, pts });
        else out.pts.push(...pts);
        if (!flushing) {
          flushing = true;
          setTimeout(flush, 0);
        }
      },
      closed: (cause, close) => {
        channels.delete(m.id);
        post(m.id);
        scope.postMessage({ t: "closed", id: m.id, cause, close, stats: stats(channel) });
      }
    });
    channels.set(m.id, channel);
  } else if (m.t === "send") {
    channels.get(m.id)?.send(m.pts);
  } else {
    const channel = channels.get(m.id);
    if (channel === void 0) return;
    channels.delete(m.id);
    void channel.end(m.code).then(() => {
      outbox.delete(m.id);
      scope.postMessage({ t: "closed", id: m.id, cause: null, close: null, stats: stats(channel) });
    });
  }
}
scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "wake" || m.t === "unwake") {
    timer(m);
    return;
  }
  try {
    handle(m);
  } catch (e) {
    const channel = channels.get(m.id);
    channels.delete(m.id);
    outbox.delete(m.id);
    void channel?.end(1e3);
    const empty = { packetsIn: 0, packetsOut: 0, dropped: 0 };
    scope.postMessage({ t: "closed", id: m.id, cause: `transport worker: ${String(e)}`, close: null, stats: channel?.stats ?? empty });
  }
};
scope.postMessage({ t: "ready" });
