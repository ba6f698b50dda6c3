"""Drive the registry component from Python with the `wasmtime` package.

usage: registry_host.py <registry.wasm> <agents-dir> <function> [args...]

Preopens <agents-dir> as "/", calls one function of the
agentmux:registry/registry interface, and prints {"ok": value} or
{"err": {"tag": case, "val": message}} as one line of JSON. Entries are
printed as their files hold them: the on-disk (snake_case) keys, every
optional one included (null when none), then each `extra` key with its JSON
value; a `renewal` prints as its case name.

Arguments, as strings:
  write <agent-id> <local-url> <block-id> <pid> <auth-key> [<nonce>]
        [pid-started=N] [pid-namespace=N] [beat-interval-ms=N] [channel=NAME] [extra:KEY=JSON]...
  renew (the same arguments; the component requires a nonce other than 0)
  remove-owned <agent-id> <pid> <auth-key> [<nonce>]
  list-entries <max-entries>
  cleanup-stale <max-age-ms>
  lookup | remove | entry-file-name <agent-id>
and of the shared-registry interface (the preopen is then a shared root):
  write-shared | renew-shared (as write, with channel=NAME)
  remove-shared <agent-id> <channel>
  remove-owned-shared (as remove-owned)
  evict-shared <entry as printed, JSON>
  lookup-all-shared | agent-dir-name <agent-id>
"""

import json
import sys

import wasmtime
import wasmtime.component as wc

INTERFACE = "agentmux:registry/registry@0.3.0"
SHARED_INTERFACE = "agentmux:registry/shared-registry@0.3.0"
# agent-entry's fields, in WIT order, with the keys the on-disk format uses.
FIELDS = [
    ("agent-id", "agent_id"),
    ("local-url", "local_url"),
    ("block-id", "block_id"),
    ("pid", "pid"),
    ("updated-at", "updated_at"),
    ("auth-key", "auth_key"),
    ("channel", "channel"),
    ("registration-nonce", "registration_nonce"),
    ("pid-started", "pid_started"),
    ("pid-namespace", "pid_ns"),
    ("beat-interval-ms", "beat_interval_ms"),
]


class Raw(str):
    """An extra key's value: JSON text, printed as is."""


def record(**fields):
    """A component record. wasmtime-py reads a record argument's fields as
    attributes named as in WIT (kebab-case), so a dict will not do."""
    value = wc.Record()
    for name, field in fields.items():
        setattr(value, name.replace("_", "-"), field)
    return value


def plain(value):
    """Component values as JSON-ready Python values."""
    if isinstance(value, wc.Variant):
        return {"tag": value.tag, "val": value.payload}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, wc.Record) and hasattr(value, "agent-id"):
        entry = {key: getattr(value, field) for field, key in FIELDS}
        for key, text in getattr(value, "extra"):
            entry[key] = Raw(text)
        return entry
    # bool, int, str (also an enum case such as a `renewal`), None
    return value


def entry_fields(args):
    """write/renew arguments as an `entry-fields` record. A renew without a
    nonce is passed on as such (the component refuses it)."""
    agent_id, url, block, pid, key, *rest = args
    extra = {
        "channel": "",
        "registration_nonce": 0,
        "pid_started": None,
        "pid_namespace": None,
        "beat_interval_ms": None,
        "extra": [],
    }
    nonce = False
    for arg in rest:
        name, eq, value = arg.partition("=")
        if eq and name in ("pid-started", "pid-namespace", "beat-interval-ms"):
            extra[name.replace("-", "_")] = int(value)
        elif eq and name == "channel":
            extra["channel"] = value
        elif eq and name.startswith("extra:"):
            extra["extra"].append((name[len("extra:"):], value))
        elif not nonce and arg.isdigit():
            extra["registration_nonce"] = int(arg)
            nonce = True
        else:
            raise SystemExit(f"unexpected argument {arg!r}")
    return record(
        agent_id=agent_id,
        local_url=url,
        block_id=block,
        pid=int(pid),
        auth_key=key,
        **extra,
    )


def agent_entry(text):
    """An entry as this driver prints it (JSON) as an `agent-entry` record."""
    printed = json.loads(text)
    known = {key: field for field, key in FIELDS}
    fields = {"extra": []}
    for key, value in printed.items():
        if key in known:
            fields[known[key].replace("-", "_")] = value
        else:
            fields["extra"].append((key, json.dumps(value, separators=(",", ":"))))
    return record(**fields)


def parse_args(function, args):
    """Command-line strings as the function's parameter types."""
    if function in ("write", "renew", "write-shared", "renew-shared"):
        return [entry_fields(args)]
    if function == "evict-shared":
        return [agent_entry(args[0])]
    if function in ("remove-owned", "remove-owned-shared"):
        agent_id, pid, key, *nonce = args
        owner = record(
            pid=int(pid),
            auth_key=key,
            registration_nonce=int(nonce[0]) if nonce else 0,
        )
        return [agent_id, owner]
    if function in ("list-entries", "cleanup-stale"):
        return [int(args[0])]
    return list(args)


def main():
    wasm, agents_dir, function, *args = sys.argv[1:]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.preopen_dir(agents_dir, "/")
    store.set_wasi(wasi)
    linker = wc.Linker(engine)
    linker.add_wasip2()
    instance = linker.instantiate(store, wc.Component.from_file(engine, wasm))
    shared = function.endswith("-shared") or function == "agent-dir-name"
    name = SHARED_INTERFACE if shared else INTERFACE
    interface = instance.get_export_index(store, name)
    if interface is None:
        raise SystemExit(f"the component does not export {name}")
    index = instance.get_export_index(store, function, interface)
    func = index and instance.get_func(store, index)
    if func is None:
        raise SystemExit(f"no function {function!r} in {name}")
    result = func(store, *parse_args(function, args))
    func.post_return(store)
    # result<T, registry-error>: T comes back as the value, an error as a Variant.
    if isinstance(result, wc.Variant):
        print(dumps({"err": plain(result)}))
    else:
        print(dumps({"ok": plain(result)}))


def dumps(value):
    """JSON with each extra value's text as the component returned it."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}: {dumps(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


if __name__ == "__main__":
    main()
