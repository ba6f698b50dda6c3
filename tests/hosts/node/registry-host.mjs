// Drive the registry component from Node.js.
//
// usage: node registry-host.mjs <transpiled-dir> <agents-dir> <function> [args...]
//
// <transpiled-dir> holds `jco transpile registry.wasm --name registry` output.
// Preopens <agents-dir> as "/", calls one function of the
// agentmux:registry/registry@0.3.0 interface, and prints {"ok": value} or
// {"err": {"tag": case, "val": message}} as one line of JSON. Entries are
// printed as their files hold them: the on-disk (snake_case) keys, every
// optional one included (null when none), then each `extra` key with its
// JSON value; a `renewal` prints as its case name.
//
// Arguments, as strings:
//   write <agent-id> <local-url> <block-id> <pid> <auth-key> [<nonce>]
//         [pid-started=N] [pid-namespace=N] [beat-interval-ms=N] [channel=NAME] [extra:KEY=JSON]...
//   renew (the same arguments; the component requires a nonce other than 0)
//   remove-owned <agent-id> <pid> <auth-key> [<nonce>]
//   list-entries <max-entries>
//   cleanup-stale <max-age-ms>
//   lookup | remove | entry-file-name <agent-id>
// and of the shared-registry interface (the preopen is then a shared root):
//   write-shared | renew-shared (as write, with channel=NAME)
//   remove-shared <agent-id> <channel>
//   remove-owned-shared (as remove-owned)
//   evict-shared <entry as printed, JSON>
//   lookup-all-shared | agent-dir-name <agent-id>
//
// jco's mapping: records are objects with camelCase keys, an option is its
// value or undefined, u64 is a BigInt, an enum is its case name as a string,
// and an error result is thrown as a ComponentError carrying the variant.
import { _setPreopens } from "@bytecodealliance/preview2-shim/filesystem";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [transpiled, agentsDir, fn, ...args] = process.argv.slice(2);
_setPreopens({ "/": agentsDir });
const { registry, sharedRegistry } = await import(
  pathToFileURL(join(transpiled, "registry.js")).href
);

const camel = (name) => name.replace(/-(.)/g, (_, c) => c.toUpperCase());

// agent-entry's fields as jco names them, with the keys the on-disk format uses.
const FIELDS = [
  ["agentId", "agent_id"],
  ["localUrl", "local_url"],
  ["blockId", "block_id"],
  ["pid", "pid"],
  ["updatedAt", "updated_at"],
  ["authKey", "auth_key"],
  ["channel", "channel"],
  ["registrationNonce", "registration_nonce"],
  ["pidStarted", "pid_started"],
  ["pidNamespace", "pid_ns"],
  ["beatIntervalMs", "beat_interval_ms"],
];

// An extra key's value is JSON text: printed as is (see toJson).
const raw = (text) => ({ [RAW]: text });
const RAW = "\u0001raw";

function plain(value) {
  if (value === undefined) return null;
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object" && "agentId" in value) {
    const known = FIELDS.map(([field, key]) => [key, plain(value[field])]);
    const extra = value.extra.map(([key, text]) => [key, raw(text)]);
    return Object.fromEntries([...known, ...extra]);
  }
  // boolean, bigint, number, string (also an enum case such as a `renewal`)
  return value;
}

// JSON with u64 values printed exactly (a BigInt is not a JSON number) and
// extra values as the component returned their text.
function toJson(value) {
  const texts = [];
  const marked = JSON.stringify(value, (_, v) => {
    if (typeof v === "bigint") return `\u0000${v}\u0000`;
    if (v && typeof v === "object" && RAW in v) return `\u0000t${texts.push(v[RAW]) - 1}\u0000`;
    return v;
  });
  return marked
    .replace(/"\\u0000(\d+)\\u0000"/g, "$1")
    .replace(/"\\u0000t(\d+)\\u0000"/g, (_, i) => texts[Number(i)]);
}

// write/renew arguments as an `entry-fields` record. A renew without a
// nonce is passed on as such (the component refuses it).
function entryFields([agentId, localUrl, blockId, pid, authKey, ...rest]) {
  const fields = {
    agentId, localUrl, blockId, pid: Number(pid), authKey,
    channel: "", registrationNonce: 0n, extra: [],
  };
  let nonce = false;
  for (const arg of rest) {
    const m = /^(pid-started|pid-namespace|beat-interval-ms)=(\d+)$/.exec(arg);
    const extra = /^extra:([^=]+)=(.*)$/s.exec(arg);
    if (m) {
      fields[camel(m[1])] = BigInt(m[2]);
    } else if (arg.startsWith("channel=")) {
      fields.channel = arg.slice("channel=".length);
    } else if (extra) {
      fields.extra.push([extra[1], extra[2]]);
    } else if (!nonce && /^\d+$/.test(arg)) {
      fields.registrationNonce = BigInt(arg);
      nonce = true;
    } else {
      console.error(`unexpected argument ${JSON.stringify(arg)}`);
      process.exit(2);
    }
  }
  return fields;
}

// An entry as this driver prints it (JSON), as an `agent-entry` record. Its
// u64 values are below 2^53 (time stamps, nonces, namespaces), so a JSON
// number holds them exactly.
function agentEntry(text) {
  const printed = JSON.parse(text);
  const known = new Map(FIELDS.map(([field, key]) => [key, field]));
  const u64 = new Set([
    "updated_at", "registration_nonce", "pid_started", "pid_ns", "beat_interval_ms",
  ]);
  const entry = { extra: [] };
  for (const [key, value] of Object.entries(printed)) {
    if (!known.has(key)) {
      entry.extra.push([key, JSON.stringify(value)]);
    } else if (value === null) {
      entry[known.get(key)] = undefined;
    } else {
      entry[known.get(key)] = u64.has(key) ? BigInt(value) : value;
    }
  }
  return entry;
}

function params() {
  switch (fn) {
    case "write":
    case "renew":
    case "write-shared":
    case "renew-shared":
      return [entryFields(args)];
    case "evict-shared":
      return [agentEntry(args[0])];
    case "remove-owned":
    case "remove-owned-shared": {
      const [id, pid, authKey, nonce] = args;
      return [id, { pid: Number(pid), authKey, registrationNonce: BigInt(nonce ?? 0) }];
    }
    case "list-entries":
      return [Number(args[0])];
    case "cleanup-stale":
      return [BigInt(args[0])];
    default:
      return args;
  }
}

const shared = fn.endsWith("-shared") || fn === "agent-dir-name";
const func = (shared ? sharedRegistry : registry)[camel(fn)];
if (typeof func !== "function") {
  console.error(`no function ${fn} in agentmux:registry@0.3.0`);
  process.exit(2);
}
let result;
try {
  result = { ok: plain(func(...params())) };
} catch (e) {
  // jco throws a ComponentError whose payload is the registry-error variant.
  if (e && e.payload && e.payload.tag) {
    result = { err: { tag: e.payload.tag, val: e.payload.val } };
  } else {
    throw e;
  }
}
console.log(toJson(result));
