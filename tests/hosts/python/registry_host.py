"""Drive the registry component from Python with the `wasmtime` package.

usage: registry_host.py <registry.wasm> <agents-dir> <function> [args...]

Preopens <agents-dir> as "/", calls one function of the
agentmux:registry/registry interface, and prints {"ok": value} or
{"err": {"tag": case, "val": message}} as one line of JSON. Entries are
printed with the on-disk (snake_case) keys.
"""

import json
import sys

import wasmtime
import wasmtime.component as wc

INTERFACE = "agentmux:registry/registry@0.1.0"
FIELDS = ["agent-id", "local-url", "block-id", "pid", "updated-at", "auth-key", "pid-started"]


def plain(value):
    """Component values as JSON-ready Python values."""
    if isinstance(value, wc.Variant):
        return {"tag": value.tag, "val": value.payload}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "__dict__") and "agent-id" in vars(value):
        return {f.replace("-", "_"): getattr(value, f) for f in FIELDS}
    return value


def parse_args(function, args):
    """Command-line strings as the function's parameter types."""
    if function == "write":
        agent_id, url, block, pid, key = args
        return [agent_id, url, block, int(pid), key, None]
    if function == "remove-owned":
        agent_id, pid, key = args
        return [agent_id, int(pid), key]
    if function == "cleanup-stale":
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
    interface = instance.get_export_index(store, INTERFACE)
    func = instance.get_func(store, instance.get_export_index(store, function, interface))
    if func is None:
        raise SystemExit(f"no function {function!r} in {INTERFACE}")
    result = func(store, *parse_args(function, args))
    func.post_return(store)
    # result<T, registry-error>: T comes back as the value, an error as a Variant.
    if isinstance(result, wc.Variant):
        print(json.dumps({"err": plain(result)}))
    else:
        print(json.dumps({"ok": plain(result)}))


if __name__ == "__main__":
    main()
