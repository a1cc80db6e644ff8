"""steerlm's conversions in Python: the WASI components of wit/pipeline.wit run by
wasmtime-py's component API (``pip install wasmtime==50.0.1``). The same .wasm files
give the same bytes as the ``steerlm`` binary.

WASM_DIR holds the components as ``steerlm export-components DIR`` writes them
(steerlm-regression.wasm, ...) or as cargo builds them
(target/components/wasm32-wasip2/wasm/steerlm_regression_component.wasm, ...).

As a module::

    from convert import Steerlm
    steerlm = Steerlm("dist/")
    result = steerlm.to_regression(open("train.jsonl", "rb").read())
    result.output    # bytes of {"text", "label"} lines
    result.errors    # [(line, message)], 1-based lines
    steerlm.labels_to_vector("helpfulness:3,correctness:4")

As a CLI (exit code 1 and ``FILE:LINE: reason`` on stderr for bad input, nothing written)::

    python convert.py --wasm-dir DIR regression IN OUT [--use-record-system]
    python convert.py --wasm-dir DIR format IN OUT [--use-record-system]
    python convert.py --wasm-dir DIR labels-parse LABEL
    python convert.py --wasm-dir DIR labels-encode [--names a,b,..] -- SCORE..

``--wasm-dir`` defaults to $STEERLM_WASM_DIR. IN may be ``-`` for stdin, OUT ``-`` for stdout.

wasmtime-py's dynamic component API converts a ``list<u8>`` one element at a time
(a Python int and a C value per byte), so this host converts about 0.5 MB/s and
one call can move only a few MB (see CHUNK_BYTES); the Node host (jco) does about
25 MB/s. Fine for tests and small files; use the ``steerlm`` binary for datasets.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import component

#: Input handed to one component call. Smaller than steerlm's 4 MiB: wasmtime-py
#: 50 passes each list element as a 32-byte value and wasmtime caps what one call may
#: copy ("fuel allocated for hostcalls has been exhausted", after which the instance
#: cannot be entered again), which comes to about 4 MB of input and output together.
#: 256 KiB leaves room for format's output, which can be many times its input. A
#: single line longer than that limit cannot be converted by this host.
CHUNK_BYTES = 256 << 10
#: Most linear memory one instance may use, like ``steerlm --component-memory-mb 2048``.
MEMORY_BYTES = 2048 << 20


class SteerlmError(Exception):
    """A WIT ``result`` error from a component: its message, as steerlm prints it."""


@dataclass
class Converted:
    output: bytes
    errors: list  # [(line, message)]
    records_in: int
    lines_out: int


class _Component:
    """One instantiated component and the functions of the interface it exports."""

    def __init__(self, engine, path, interface):
        linker = component.Linker(engine)
        linker.add_wasip2()
        self.store = wasmtime.Store(engine)
        # An empty WASI context: no files, environment, arguments or stdio, as the
        # steerlm host grants (the components import only wasi:io and wasi:cli).
        self.store.set_wasi(wasmtime.WasiConfig())
        self.store.set_limits(memory_size=MEMORY_BYTES)
        self.instance = linker.instantiate(self.store, component.Component.from_file(engine, str(path)))
        self.interface = self.instance.get_export_index(self.store, f"steerlm:pipeline/{interface}@0.1.0")
        if self.interface is None:
            raise SteerlmError(f"{path} does not export {interface}")

    def call(self, name, *args):
        index = self.instance.get_export_index(self.store, name, self.interface)
        return self.instance.get_func(self.store, index)(self.store, *args)


def _find(wasm_dir, name):
    for file in (f"steerlm-{name}.wasm", f"steerlm_{name}_component.wasm"):
        path = Path(wasm_dir) / file
        if path.exists():
            return path
    raise FileNotFoundError(f"no {name} component in {wasm_dir}")


def _record(**fields):
    """A WIT record argument: wasmtime-py reads its fields by their WIT (kebab-case) names."""
    record = component.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


def _ok(value):
    """A WIT ``result``'s ok value, or SteerlmError. wasmtime-py returns the payload
    itself when ok and err map to different Python types (``result<list<..>, string>``
    gives a list or a str), and a Variant only when they do not (``result<string, string>``)."""
    if isinstance(value, component.Variant):
        if value.tag == "err":
            raise SteerlmError(value.payload)
        return value.payload
    if isinstance(value, str):
        raise SteerlmError(value)
    return value


def _whole_line_chunks(data, size):
    """Chunks of whole lines (about ``size`` bytes; a longer line makes a longer chunk),
    each with the 1-based number of its first line, which the components put in errors."""
    start, line = 0, 1
    while start < len(data):
        end = min(start + size, len(data))
        if end < len(data):
            newline = data.find(b"\n", end - 1)
            end = len(data) if newline == -1 else newline + 1
        chunk = data[start:end]
        yield chunk, line
        line += chunk.count(b"\n")
        start = end


class Steerlm:
    """The regression, formatting and labels components of one WASM_DIR."""

    def __init__(self, wasm_dir):
        engine = wasmtime.Engine()
        self._regression = _Component(engine, _find(wasm_dir, "regression"), "regression")
        self._formatting = _Component(engine, _find(wasm_dir, "formatting"), "formatting")
        self._labels = _Component(engine, _find(wasm_dir, "labels"), "labels")

    def _convert_all(self, target, function, data, use_record_system, chunk_bytes):
        outputs, errors, records_in, lines_out = [], [], 0, 0
        options = _record(use_record_system=use_record_system)
        for chunk, first_line in _whole_line_chunks(data, chunk_bytes):
            result = target.call(function, chunk, first_line, options)
            outputs.append(result.output)
            errors += [(e.line, e.message) for e in result.errors]
            records_in += getattr(result, "records-in")
            lines_out += getattr(result, "lines-out")
        return Converted(b"".join(outputs), errors, records_in, lines_out)

    def to_regression(self, data, use_record_system=False, chunk_bytes=CHUNK_BYTES):
        """SFT JSONL bytes to ``{"text", "label": [9 floats]}`` lines, as ``steerlm
        to-regression`` writes them. Bad lines are left out and reported in ``errors``."""
        return self._convert_all(self._regression, "convert-chunk", data, use_record_system, chunk_bytes)

    def format(self, data, use_record_system=False, chunk_bytes=CHUNK_BYTES):
        """SFT JSONL bytes to one ``{"text": prefix}`` line per labeled prefix (``steerlm format``)."""
        return self._convert_all(self._formatting, "format-chunk", data, use_record_system, chunk_bytes)

    def labeled_prefixes(self, record, use_record_system=False):
        """Every labeled prefix of one SFT record (a JSON string)."""
        return _ok(self._formatting.call("labeled-prefixes", record, _record(use_record_system=use_record_system)))

    def system_prompt(self):
        return self._formatting.call("system-prompt")

    def attribute_names(self):
        """The nine SteerLM attributes, in vector order."""
        return self._labels.call("attribute-names")

    def labels_parse(self, label):
        """``[(key, value)]`` as written: keys not trimmed, later duplicates win."""
        return [(pair.key, pair.value) for pair in _ok(self._labels.call("parse", label))]

    def labels_to_vector(self, label):
        """The 9 floats in attribute order, -100.0 where an attribute is missing."""
        return _ok(self._labels.call("to-vector", label))

    def encode_scores(self, scores, names=None):
        """Raw scores to a label string: clamped to [0, 4], rounded half to even."""
        return _ok(self._labels.call("encode-scores", [float(s) for s in scores], names))


def _main(argv):
    parser = argparse.ArgumentParser(description="steerlm's conversions through its WASI components")
    parser.add_argument("--wasm-dir", default=os.environ.get("STEERLM_WASM_DIR"))
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("regression", "format"):
        command = commands.add_parser(name)
        command.add_argument("input")
        command.add_argument("output")
        command.add_argument("--use-record-system", action="store_true")
    commands.add_parser("labels-parse").add_argument("label")
    encode = commands.add_parser("labels-encode")
    encode.add_argument("--names")
    encode.add_argument("scores", nargs="+", type=float)
    args = parser.parse_args(argv)
    if not args.wasm_dir:
        parser.error("--wasm-dir (or STEERLM_WASM_DIR) is required")
    steerlm = Steerlm(args.wasm_dir)

    if args.command in ("regression", "format"):
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
        convert = steerlm.to_regression if args.command == "regression" else steerlm.format
        result = convert(data, use_record_system=args.use_record_system)
        if result.errors:
            line, message = result.errors[0]
            raise SteerlmError(f"{'<stdin>' if args.input == '-' else args.input}:{line}: {message}")
        if args.output == "-":
            sys.stdout.buffer.write(result.output)
        else:
            # Written beside the destination and renamed: a failed run leaves no partial file.
            temp = Path(args.output).with_name(f".{Path(args.output).name}.{os.getpid()}.tmp")
            try:
                temp.write_bytes(result.output)
                temp.replace(args.output)
            finally:
                temp.unlink(missing_ok=True)
        where = "<stdout>" if args.output == "-" else args.output
        print(f"{result.records_in} records -> {result.lines_out} lines in {where}", file=sys.stderr)
    elif args.command == "labels-parse":
        pairs = steerlm.labels_parse(args.label)
        vector = steerlm.labels_to_vector(args.label)
        # Compact, like `steerlm label parse` (Python's float repr matches its -100.0).
        document = {"pairs": pairs, "attributes": steerlm.attribute_names(), "vector": vector}
        print(json.dumps(document, separators=(",", ":"), ensure_ascii=False))
    else:
        names = args.names.split(",") if args.names is not None else None
        print(steerlm.encode_scores(args.scores, names))


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except (SteerlmError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
