// Drive the registry component from Node.js.
//
// usage: node registry-host.mjs <transpiled-dir> <agents-dir> <function> [args...]
//
// <transpiled-dir> holds `jco transpile registry.wasm --name registry` output.
// Preopens <agents-dir> as "/", calls one function of the
// agentmux:registry/registry interface, and prints {"ok": value} or
// {"err": {"tag": case, "val": message}} as one line of JSON. Entries are
// printed with the on-disk (snake_case) keys.
import { _setPreopens } from "@bytecodealliance/preview2-shim/filesystem";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [transpiled, agentsDir, fn, ...args] = process.argv.slice(2);
_setPreopens({ "/": agentsDir });
const { registry } = await import(pathToFileURL(join(transpiled, "registry.js")).href);

const camel = (name) => name.replace(/-(.)/g, (_, c) => c.toUpperCase());
const snake = (name) => name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());

function plain(value) {
  if (typeof value === "bigint") return Number(value);
  if (value === undefined) return null;
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [snake(k), plain(v)]));
  }
  return value;
}

function params() {
  switch (fn) {
    case "write": {
      const [id, url, block, pid, key] = args;
      return [id, url, block, Number(pid), key, undefined];
    }
    case "remove-owned": {
      const [id, pid, key] = args;
      return [id, Number(pid), key];
    }
    case "cleanup-stale":
      return [BigInt(args[0])];
    default:
      return args;
  }
}

const func = registry[camel(fn)];
if (typeof func !== "function") {
  console.error(`no function ${fn} in agentmux:registry/registry`);
  process.exit(2);
}
try {
  console.log(JSON.stringify({ ok: plain(func(...params())) }));
} catch (e) {
  // jco throws a ComponentError whose payload is the registry-error variant.
  if (e && e.payload && e.payload.tag) {
    console.log(JSON.stringify({ err: { tag: e.payload.tag, val: e.payload.val } }));
  } else {
    throw e;
  }
}
