/**
 * The page's transport worker (channel.ts): each channel's WebSocket, handshake and AES-GCM run
 * here; the main thread gets the plaintexts, in order, and sends plaintexts to seal.
 */

import { SocketChannel, type ChannelStats, type FromWorker, type ToWorker } from "./channel.js";

interface WorkerScope {
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
}

const scope = globalThis as unknown as WorkerScope;
const channels = new Map<number, SocketChannel>();

function stats(channel: SocketChannel): ChannelStats {
  return { ...channel.stats };
}

scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "open") {
    const channel: SocketChannel = new SocketChannel(WebSocket, m.request, {
      // Each plaintext has its own buffer (WebCrypto's result): moved, not copied.
      plaintexts: (pts) => scope.postMessage({ t: "data", id: m.id, pts, stats: stats(channel) }, pts.map((p) => p.buffer as ArrayBuffer)),
      closed: (cause) => {
        channels.delete(m.id);
        scope.postMessage({ t: "closed", id: m.id, cause, stats: stats(channel) });
      },
    });
    channels.set(m.id, channel);
  } else if (m.t === "send") {
    channels.get(m.id)?.send(m.pts);
  } else {
    const channel = channels.get(m.id);
    if (channel === undefined) return;
    channels.delete(m.id);
    void channel.end(m.code).then(() => scope.postMessage({ t: "closed", id: m.id, cause: null, stats: stats(channel) }));
  }
};

scope.postMessage({ t: "ready" });
