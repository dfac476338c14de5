/**
 * JSON lines over stdin/stdout, for the Python tests that drive this package (tests/js/):
 * a request `{"id", "op", "args"}` gets `{"id", "ok": true, "result"}` or `{"id", "ok": false,
 * "error", "name", "code"}`; anything may also print `{"event", ...}` at any time. Byte strings
 * travel as lowercase hex, bigints as decimal strings. Requests run concurrently.
 */

import { createInterface } from "node:readline";

import { toHex } from "../src/bytes.js";

export type Op = (args: Record<string, any>) => unknown;

function replacer(_key: string, v: unknown): unknown {
  if (v instanceof Uint8Array) return toHex(v);
  if (typeof v === "bigint") return String(v);
  return v;
}

export function emit(message: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(message, replacer) + "\n");
}

/** Serves `ops` until stdin closes or the `exit` op; `cleanup` runs before the process exits. */
export function serve(ops: Record<string, Op>, cleanup: () => Promise<void> = async () => {}): void {
  const lines = createInterface({ input: process.stdin });
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await cleanup().catch((e: unknown) => process.stderr.write(`cleanup failed: ${String(e)}\n`));
    process.exit(0);
  };
  ops["exit"] = () => {
    setTimeout(() => void stop(), 0);
    return null;
  };
  lines.on("line", (line) => {
    if (line.trim() === "") return;
    const { id, op, args } = JSON.parse(line) as { id: number; op: string; args: Record<string, any> };
    const fn = ops[op];
    Promise.resolve()
      .then(() => {
        if (fn === undefined) throw new Error(`no op ${op}`);
        return fn(args ?? {});
      })
      .then(
        (result) => emit({ id, ok: true, result: result ?? null }),
        (e: any) => emit({ id, ok: false, error: String(e?.message ?? e), name: e?.name ?? null, code: e?.code ?? null }),
      );
  });
  lines.on("close", () => void stop());
}
