/**
 * The page's transport worker (channel.ts): each channel's WebSocket, handshake and AES-GCM run
 * here; the main thread gets the plaintexts, in order, and sends plaintexts to seal.
 *
 * Plaintexts go to the main thread at the end of the worker's current turn: when packets come
 * faster than the worker posts (a busy room, a loaded machine), those opened meanwhile travel in
 * one message, so the page handles fewer events exactly when it has less time; when they come
 * one at a time, each goes at once.
 */

import { openSocketChannel, type Channel, type ChannelStats, type FromWorker, type ToWorker } from "./channel.js";

interface WorkerScope {
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
}

const scope = globalThis as unknown as WorkerScope;
const channels = new Map<number, Channel>();
/** The page's timers (channel.ts, pageTimer), by their ids. */
const wakes = new Map<number, ReturnType<typeof setTimeout>>();
const outbox = new Map<number, { channel: Channel; pts: Uint8Array[] }>();
let flushing = false;

function stats(channel: Channel): ChannelStats {
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

/** A timer of the page's: its wake-up, posted back when due. Ids are the timers' own, not
 * channels'. */
function timer(m: Extract<ToWorker, { t: "wake" | "unwake" }>): void {
  const id = m.id;
  clearTimeout(wakes.get(id));
  wakes.delete(id);
  if (m.t === "wake") {
    wakes.set(
      id,
      setTimeout(() => {
        wakes.delete(id);
        scope.postMessage({ t: "wake", id });
      }, m.ms),
    );
  }
}

function handle(m: Exclude<ToWorker, { t: "wake" | "unwake" }>): void {
  if (m.t === "open") {
    const channel: Channel = openSocketChannel(WebSocket, m.request, {
      plaintexts: (pts) => {
        const out = outbox.get(m.id);
        if (out === undefined) outbox.set(m.id, { channel, pts });
        else out.pts.push(...pts);
        if (!flushing) {
          flushing = true;
          setTimeout(flush, 0);
        }
      },
      closed: (cause, close) => {
        channels.delete(m.id);
        post(m.id); // what came before the close, first
        scope.postMessage({ t: "closed", id: m.id, cause, close, stats: stats(channel) });
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
    // Uncaught, it would reach the page as the worker's error event, which reads as "the worker
    // died" and fails every channel: it ends this one channel only.
    const channel = channels.get(m.id);
    channels.delete(m.id);
    outbox.delete(m.id);
    void channel?.end(1000);
    const empty = { packetsIn: 0, packetsOut: 0, dropped: 0 };
    scope.postMessage({ t: "closed", id: m.id, cause: `transport worker: ${String(e)}`, close: null, stats: channel?.stats ?? empty });
  }
};

scope.postMessage({ t: "ready" });
