// Builds the browser bundles that `relay dev` serves at /demo: relay-client.js (the client as an
// ES module), relay-worker.js (its transport worker, which the client loads from next to itself),
// demo.js (the demo page), and the code they share, split out once (relay-shared-<hash>.js).
// They are committed in relay/control/demo/ so that `make run` needs only Python;
// tests/js/test_bundle.py rebuilds them into a temporary folder and compares byte for byte.
// Usage: node scripts/bundle.mjs [out dir] (default: relay/control/demo).
import { build } from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const pkg = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const out = path.resolve(process.argv[2] ?? path.join(pkg, "..", "..", "relay", "control", "demo"));
for (const name of readdirSync(out, { withFileTypes: true }).map((e) => e.name)) {
  if (name.endsWith(".js")) rmSync(path.join(out, name)); // no stale chunk stays behind
}

await build({
  absWorkingDir: pkg, // the paths esbuild writes in comments are relative to it: same on every machine
  entryPoints: { "relay-client": "src/index.ts", "relay-worker": "src/relay-worker.ts", demo: "demo/demo.ts" },
  outdir: out,
  chunkNames: "relay-shared-[hash]",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  charset: "utf8",
  legalComments: "inline",
  banner: { js: "// Built from clients/js by `npm run bundle` (esbuild); do not edit." },
  logLevel: "warning",
});
