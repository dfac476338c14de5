// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  SocketChannel
} from "./relay-shared-LKKLOGMY.js";

// src/relay-worker.ts
var scope = globalThis;
var channels = /* @__PURE__ */ new Map();
function stats(channel) {
  return { ...channel.stats };
}
scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "open") {
    const channel = new SocketChannel(WebSocket, m.request, {
      // Each plaintext has its own buffer (WebCrypto's result): moved, not copied.
      plaintexts: (pts) => scope.postMessage({ t: "data", id: m.id, pts, stats: stats(channel) }, pts.map((p) => p.buffer)),
      closed: (cause) => {
        channels.delete(m.id);
        scope.postMessage({ t: "closed", id: m.id, cause, stats: stats(channel) });
      }
    });
    channels.set(m.id, channel);
  } else if (m.t === "send") {
    channels.get(m.id)?.send(m.pts);
  } else {
    const channel = channels.get(m.id);
    if (channel === void 0) return;
    channels.delete(m.id);
    void channel.end(m.code).then(() => scope.postMessage({ t: "closed", id: m.id, cause: null, stats: stats(channel) }));
  }
};
scope.postMessage({ t: "ready" });
