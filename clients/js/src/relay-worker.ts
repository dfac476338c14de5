/**
 * The page's transport worker (channel.ts): each channel's WebSocket, handshake and AES-GCM run
 * here; the main thread gets the plaintexts, in order, and sends plaintexts to seal.
 *
 * Plaintexts go to the main thread at the end of the worker's current turn: when packets come
 * faster than the worker posts (a busy room, a loaded machine), those opened meanwhile travel in
 * one message, so the page handles fewer events exactly when it has less time; when they come
 * one at a time, each goes at once.
 */

import { SocketChannel, type ChannelStats, type FromWorker, type ToWorker } from "./channel.js";

interface WorkerScope {
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
}

const scope = globalThis as unknown as WorkerScope;
const channels = new Map<number, SocketChannel>();
const outbox = new Map<number, { channel: SocketChannel; pts: Uint8Array[] }>();
let flushing = false;

function stats(channel: SocketChannel): ChannelStats {
  return { ...channel.stats };
}

function post(id: number): void {
  const out = outbox.get(id);
  if (out === undefined) return;
  outbox.delete(id);
  // Each plaintext has its own buffer (WebCrypto's result): moved, not copied.
  const transfer = out.pts.map((p) => p.buffer as ArrayBuffer);
  scope.postMessage({ t: "data", id, pts: out.pts, stats: stats(out.channel) }, transfer);
}

function flush(): void {
  flushing = false;
  for (const id of [...outbox.keys()]) post(id);
}

scope.onmessage = (ev) => {
  const m = ev.data;
  if (m.t === "open") {
    const channel: SocketChannel = new SocketChannel(WebSocket, m.request, {
      plaintexts: (pts) => {
        const out = outbox.get(m.id);
        if (out === undefined) outbox.set(m.id, { channel, pts });
        else out.pts.push(...pts);
        if (!flushing) {
          flushing = true;
          setTimeout(flush, 0);
        }
      },
      closed: (cause) => {
        channels.delete(m.id);
        post(m.id); // what came before the close, first
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
    void channel.end(m.code).then(() => {
      outbox.delete(m.id);
      scope.postMessage({ t: "closed", id: m.id, cause: null, stats: stats(channel) });
    });
  }
};

scope.postMessage({ t: "ready" });
