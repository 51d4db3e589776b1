"""The `keras-blockreuse` command line: inspect, diff, convert and verify weights files.

Every command reads `.blocks.h5` files and the Keras formats (`.weights.h5`,
`.weights.json`, `.keras`, legacy `.h5`). Errors are one line on stderr and a non-zero exit
status, never a traceback.

Example:

```
keras-blockreuse inspect classifier.keras --blocks vgg
keras-blockreuse inspect run/blocks_010.blocks.h5 --json
keras-blockreuse diff run/blocks_001.blocks.h5 run/blocks_010.blocks.h5
keras-blockreuse convert vgg16.weights.h5 vgg16.blocks.h5 --blocks vgg
keras-blockreuse verify run/blocks_010.blocks.h5
```

Exit status: 0 on success (also when the reader of the output goes away, as in
`keras-blockreuse inspect FILE | head`); `diff` 1 when the files differ (where they group
their layers into different blocks, it says so and compares the values layer by layer);
`verify` 1 when a check fails; 2 for any other error.

The command line starts fast: reading, comparing, verifying and copying block files never
imports Keras or TensorFlow; the Keras formats import Keras when they are read, with
TensorFlow's C++ log quiet unless `TF_CPP_MIN_LOG_LEVEL` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Sequence

PROG = "keras-blockreuse"


class CommandError(Exception):
    """An error to report in one line, with an exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise CommandError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    from keras_blockreuse import __version__

    parser = _Parser(prog=PROG, description="Inspect, compare, convert and verify block files "
                     "and Keras weights files.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rule_help = ("block rule for files without blocks: a preset (vgg, resnet, ...) or a "
                 "regular expression with one group; default: the rule a BlockModel's .keras "
                 "archive records, else a detected preset, else the block_1_0 naming "
                 "convention")
    inspect = commands.add_parser("inspect", help="blocks, layers, variables, shapes, metadata")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--blocks", help=rule_help)

    diff = commands.add_parser("diff", help="blocks and variables that differ between two files")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--blocks", help=rule_help)
    diff.add_argument("--json", action="store_true", help="machine-readable output")

    convert = commands.add_parser("convert", help="a Keras or legacy file to a .blocks.h5 file")
    convert.add_argument("source")
    convert.add_argument("destination", help="the .blocks.h5 file to write")
    convert.add_argument("--blocks", help=rule_help)
    convert.add_argument("--only", nargs="+", help="block names or globs to write")

    verify = commands.add_parser("verify", help="check every checksum; exit 0 or 1")
    verify.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do. Python flushes
        # stdout again at exit; point it at devnull so that flush cannot fail too.
        with contextlib.suppress(OSError, ValueError):  # stdout without a descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _check_rule(getattr(args, "blocks", None))
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        raise
    except CommandError as e:
        _fail(str(e))
        return e.status
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - every bad input ends in one line, not a traceback
        _fail(_one_line(e))
        return 2


def _check_rule(rule: str | None) -> None:
    """Refuses a `--blocks` value that is no block rule, naming the option (not the file)."""
    if rule is None:
        return
    from keras_blockreuse.blocks import resolve_rule

    try:
        resolve_rule(rule)
    except ValueError as e:
        raise CommandError(f"argument --blocks: {_one_line(e)}") from None


def _load_keras_quietly(*paths: str) -> None:
    """Imports Keras before a file other than a block file is read, without TensorFlow's log.

    Block files need no Keras, so nothing is imported for them. For the Keras formats, unless
    the user set `TF_CPP_MIN_LOG_LEVEL` (then TensorFlow behaves as they asked), it is set to 3
    and standard error points at devnull while Keras and TensorFlow import: TensorFlow 2.21
    logs its start-up lines through absl before its logging is initialised, where
    `TF_CPP_MIN_LOG_LEVEL` does not reach them. An import error still raises, and is reported.
    """
    from keras_blockreuse.store import SUFFIX

    if all(path.endswith(SUFFIX) for path in paths) or "keras" in sys.modules:
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import keras  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) and (
            error.strerror and "cannot write" in error.strerror):  # says what and where
        return " ".join(error.strerror.split())
    known = ("BlockFileError", "BlockMismatchError", "ValueError", "FileNotFoundError")
    name = type(error).__name__
    return text if name in known and text else f"{name}: {text}"


# --- inspect ----------------------------------------------------------------------------


def describe(path: str, rule: str | None = None) -> dict:
    """A JSON-ready description of any supported file: its facts, blocks and variables."""
    from keras_blockreuse.sources import open_source
    from keras_blockreuse.sources.block_file import BlockFileSource

    _exists(path)
    _load_keras_quietly(path)
    recorded = None
    if rule is None:  # a BlockModel's archive: the blocks load_model gives it
        from keras_blockreuse.sources.keras_archive import recorded_rule

        recorded = rule = recorded_rule(path)
    with open_source(path, rule) as src:
        if isinstance(src, BlockFileSource):
            from keras_blockreuse.store import read_blocks

            info = read_blocks(path)
            facts = {
                "format": f"keras-blockreuse block file, version {info.format_version}",
                "keras_version": info.keras_version,
                "backend": info.backend,
                "created": info.created,
                "model_name": info.model_name,
            }
            metadata = info.metadata
        else:
            from keras_blockreuse.errors import BlockFileError
            from keras_blockreuse.presets import detect_preset

            rebuild = getattr(src, "rebuild_structure", None)  # `.keras`: variable names
            if rebuild is not None:
                with contextlib.suppress(BlockFileError):
                    rebuild()
            facts = dict(getattr(src, "info", {}))
            if "block rule" not in facts:  # a keras-hub preset directory says its own
                tops = list(dict.fromkeys(layer.top for layer in src.layers()))
                preset = detect_preset(tops)
                facts["block rule"] = (
                    f"recorded by its BlockModel: {json.dumps(recorded)}" if recorded is not None
                    else rule if rule is not None else (
                    f"preset {preset!r} (detected)" if preset else "default (block_1_0 -> block_1)"))
            metadata = {}
        blocks = []
        for name in src.block_names():
            layers = []
            for layer in src.block_layers(name):
                layers.append({
                    "path": layer.path,
                    "class_name": layer.class_name,
                    "variables": [
                        {"name": v.name, "key": v.key, "shape": list(v.shape), "dtype": v.dtype,
                         "num_params": v.size, "nbytes": v.nbytes}
                        for v in layer.variables
                    ],
                })
            variables = [v for layer in layers for v in layer["variables"]]
            blocks.append({
                "name": name,
                "num_params": sum(v["num_params"] for v in variables),
                "nbytes": sum(v["nbytes"] for v in variables),
                "layers": layers,
            })
    return {
        "path": path,
        **facts,
        "metadata": metadata,
        "num_params": sum(b["num_params"] for b in blocks),
        "nbytes": sum(b["nbytes"] for b in blocks),
        "blocks": blocks,
    }


def _inspect(args) -> int:
    description = describe(args.file, args.blocks)
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    for key, value in description.items():
        if key not in ("blocks", "metadata", "num_params", "nbytes") and value != "":
            print(f"{key}: {value}")
    if description["metadata"]:
        print(f"metadata: {json.dumps(description['metadata'])}")
    table = Table(title_justify="left")
    for column in ("block", "layer", "variable", "shape", "dtype", "params", "bytes"):
        table.add_column(column, justify="right" if column in ("params", "bytes") else "left")
    for block in description["blocks"]:
        first = True
        for layer in block["layers"]:
            for v in layer["variables"]:
                table.add_row(escape(block["name"]) if first else "", escape(layer["path"]),
                              escape(v["name"]),
                              str(tuple(v["shape"])), v["dtype"], f"{v['num_params']:,}",
                              _bytes(v["nbytes"]))
                first = False
        table.add_row(f"[bold]{escape(block['name'])} total[/]", "", "", "", "",
                      f"[bold]{block['num_params']:,}[/]", f"[bold]{_bytes(block['nbytes'])}[/]",
                      end_section=True)
    console.print(table)
    print(f"{len(description['blocks'])} blocks, {description['num_params']:,} "
          f"parameters, {_bytes(description['nbytes'])}")
    return 0


# --- diff -------------------------------------------------------------------------------


def compare(a: str, b: str, rule: str | None = None) -> list[dict]:
    """Every block, layer and variable that differs between two files, with max abs diff.

    Where the two files group their layers into different blocks (a keras-hub task's block
    file, `stem`, `stage_1`, ..., against its `.keras` archive, whose backbone is one block),
    the first row says so (`status` "grouped differently", with both files' blocks) and the
    values are compared layer by layer instead: layers paired by name path, else by layer
    name (the last step of the path) where that name is one layer's on each side, of the same
    class. Layers that pair neither way are "only in A" / "only in B".
    """
    from keras_blockreuse.sources import open_source

    _exists(a)
    _exists(b)
    _load_keras_quietly(a, b)
    rows = []
    with open_source(a, rule) as left, open_source(b, rule) as right:
        left_blocks, right_blocks = left.block_names(), right.block_names()
        pairs, unpaired = _pair_layers(left, right)
        if any(block_a != block_b for (block_a, _), (block_b, _) in pairs):
            rows.append({"block": "*", "layer": "*", "variable": "*",
                         "status": "grouped differently", "blocks_a": left_blocks,
                         "blocks_b": right_blocks, "layers_paired": len(pairs)})
            values = _Values(left, right)
            for (block_a, layer_a), (block_b, layer_b) in pairs:
                where = {"block": block_a, "layer": layer_a.path}
                if block_b != block_a:
                    where["block_b"] = block_b
                if layer_b.path != layer_a.path:
                    where["layer_b"] = layer_b.path
                rows.extend(_compare_layer(where, (block_a, layer_a), (block_b, layer_b),
                                           values))
            rows.extend({"block": block, "layer": layer.path, "variable": "*",
                         "status": f"only in {side}"} for side, block, layer in unpaired)
            return rows
        for name in left_blocks:
            if name not in right_blocks:
                rows.append({"block": name, "layer": "*", "variable": "*", "status": "only in A"})
        for name in right_blocks:
            if name not in left_blocks:
                rows.append({"block": name, "layer": "*", "variable": "*", "status": "only in B"})
        for name in [n for n in left_blocks if n in right_blocks]:
            rows.extend(_compare_block(name, left, right))
    return rows


def _pair_layers(left, right) -> tuple[list, list]:
    """The layers of two sources paired across their blocks: `([((block, layer) of A,
    (block, layer) of B)], [(side, block, layer) unpaired])`, in A's order.

    By name path first; then by layer name (the path's last step), where that name is one
    layer's on each side and the classes agree: a keras-hub block file keeps a backbone's
    layers by their names in the backbone (`conv1_conv`), its `.keras` archive by their
    paths (`res_net_backbone/conv1_conv`). A name held by two layers of one side pairs
    neither."""
    return _paired([[(block, layer) for block in src.block_names()
                     for layer in src.block_layers(block)] for src in (left, right)])


def _paired(sides: list[list[tuple]]) -> tuple[list, list]:
    """`_pair_layers` over two lists of `(block, layer)`."""
    from collections import Counter

    pairs: dict[int, tuple] = {}
    taken: set[int] = set()
    for key in (lambda layer: layer.path, lambda layer: layer.path.rsplit("/", 1)[-1]):
        counts = [Counter(key(layer) for _, layer in side) for side in sides]
        right_by = {key(layer): i for i, (_, layer) in enumerate(sides[1])
                    if counts[1][key(layer)] == 1 and i not in taken}
        for i, (_, layer) in enumerate(sides[0]):
            j = right_by.get(key(layer))
            if i in pairs or j is None or counts[0][key(layer)] != 1:
                continue
            other = sides[1][j][1]
            if layer.class_name and other.class_name and layer.class_name != other.class_name:
                continue
            pairs[i] = (sides[0][i], sides[1][j])
            taken.add(j)
    unpaired = [("A", block, layer) for i, (block, layer) in enumerate(sides[0])
                if i not in pairs]
    unpaired += [("B", block, layer) for j, (block, layer) in enumerate(sides[1])
                 if j not in taken]
    return [pairs[i] for i in sorted(pairs)], unpaired


class _Values:
    """Each side's block values, read once when first needed."""

    def __init__(self, left, right):
        self._sources = {"A": left, "B": right}
        self._read: dict[tuple[str, str], dict] = {}

    def get(self, side: str, block: str, path: str, key: str):
        if (side, block) not in self._read:
            self._read[side, block] = self._sources[side].read_block(block)
        return self._read[side, block][path][key]


def _compare_block(name, left, right) -> list[dict]:
    """One block of both files, layer by layer: paired by name path, else by layer name
    (`_paired`: a keras-hub block file keeps `conv1_conv` where the task's `.keras` keeps
    `res_net_backbone/conv1_conv`)."""
    rows = []
    values = _Values(left, right)
    pairs, unpaired = _paired([[(name, layer) for layer in src.block_layers(name)]
                               for src in (left, right)])
    for (_, layer_a), (_, layer_b) in pairs:
        where = {"block": name, "layer": layer_a.path}
        if layer_b.path != layer_a.path:
            where["layer_b"] = layer_b.path
        rows.extend(_compare_layer(where, (name, layer_a), (name, layer_b), values))
    rows.extend({"block": name, "layer": layer.path, "variable": "*",
                 "status": f"only in {side}"} for side, _, layer in unpaired)
    return rows


def _compare_layer(where: dict, a: tuple, b: tuple, values: _Values) -> list[dict]:
    """The variables of one layer of A and one of B that differ (`a`, `b`: block, layer)."""
    import numpy as np

    rows = []
    a_vars = {v.key: v for v in a[1].variables}
    b_vars = {v.key: v for v in b[1].variables}
    for key in list(a_vars) + [k for k in b_vars if k not in a_vars]:
        va, vb = a_vars.get(key), b_vars.get(key)
        row = {**where, "variable": (va or vb).name}
        if va is None or vb is None:
            row["status"] = f"only in {'A' if va else 'B'}"
        elif va.shape != vb.shape:
            row["status"] = f"shape {va.shape} vs {vb.shape}"
        else:
            x = values.get("A", a[0], a[1].path, key)
            y = values.get("B", b[0], b[1].path, key)
            if x.dtype == y.dtype and x.tobytes() == y.tobytes():
                continue
            delta = np.abs(x.astype(np.float64) - y.astype(np.float64))
            row["max_abs_diff"] = float(delta.max()) if delta.size else 0.0
            row["status"] = "values differ" if va.dtype == vb.dtype else (
                f"dtype {va.dtype} vs {vb.dtype}")
        rows.append(row)
    return rows


def _diff(args) -> int:
    rows = compare(args.a, args.b, args.blocks)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "identical": not rows, "differences": rows},
                         indent=2))
        return 1 if rows else 0
    console = _console()
    if not rows:
        print(f"identical: {args.a} and {args.b} hold the same blocks, variables and values")
        return 0
    from rich.markup import escape
    from rich.table import Table

    # The paths on their own lines, never wrapped (a table title folds them mid-name).
    console.print(f"A = {args.a}\nB = {args.b}", markup=False, highlight=False, soft_wrap=True)
    grouping = rows[0] if rows[0]["status"] == "grouped differently" else None
    if grouping is not None:
        rows = rows[1:]
        print("The two files group their layers into different blocks:\n"
              f"  A: {', '.join(grouping['blocks_a'])}\n  B: {', '.join(grouping['blocks_b'])}\n"
              f"Compared layer by layer instead ({grouping['layers_paired']} layers paired by "
              "name, or by the last step of their paths):")
        if not rows:
            print("the layers, variables and values are identical; only the grouping differs")
            return 1
    table = Table()
    for column in ("block", "layer", "variable", "difference", "max abs diff"):
        table.add_column(column, justify="right" if column == "max abs diff" else "left")
    for row in rows:
        diff = row.get("max_abs_diff")
        block = row["block"] + (f" (B: {row['block_b']})" if "block_b" in row else "")
        layer = row["layer"] + (f" (B: {row['layer_b']})" if "layer_b" in row else "")
        table.add_row(escape(block), escape(layer), escape(row["variable"]),
                      escape(row["status"]),
                      "" if diff is None else f"{diff:.6g}")
    console.print(table)
    print(f"{len(rows)} difference(s)" + (" besides the grouping" if grouping else ""))
    return 1


# --- convert and verify -----------------------------------------------------------------


def _convert(args) -> int:
    from keras_blockreuse.convert import convert

    _exists(args.source)
    _load_keras_quietly(args.source)
    path = convert(args.source, args.destination, blocks=args.blocks, only=args.only)
    from keras_blockreuse.sources.keras_weights import OWN_VARIABLES
    from keras_blockreuse.store import read_blocks

    info = read_blocks(path)
    print(f"wrote {path}: {len(info.blocks)} blocks ({', '.join(info.blocks)}), "
          f"{info.num_params:,} parameters")
    left = info.metadata.get("source_" + OWN_VARIABLES.replace(" ", "_"))
    if left:
        print(f"not converted: {left}")
    return 0


def _verify(args) -> int:
    from keras_blockreuse.errors import BlockFileError
    from keras_blockreuse.sources import open_source
    from keras_blockreuse.sources.block_file import BlockFileSource

    try:
        _exists(args.file)
        _load_keras_quietly(args.file)
        with open_source(args.file) as src:
            names = src.block_names()
            failures = []
            for name in names:
                try:
                    src.read_block(name)
                except BlockFileError as e:
                    failures.append(_one_line(e))
            checked = isinstance(src, BlockFileSource)
            archive = str(getattr(src, "info", {}).get("format", "")).startswith("Keras archive")
    except Exception as e:  # noqa: BLE001 - an unreadable file fails verification: status 1
        message = str(e) if isinstance(e, CommandError) else _one_line(e)
        raise CommandError(message, status=1) from None
    if failures:
        for failure in failures:
            _fail(failure)
        return 1
    what = "every checksum matches" if checked else (
        "every variable is readable and the archive's zip CRC-32 of its weights matches (its "
        "values have no checksums of their own)" if archive else
        "every variable is readable (this format has no checksums)")
    print(f"ok: {args.file}: {len(names)} blocks, {what}")
    return 0


def _exists(path: str) -> None:
    """The path exists and is a regular file or a folder (a keras-hub preset); a FIFO, socket
    or device is refused here, before any reader (or Keras) is loaded."""
    from keras_blockreuse.safety import check_regular_file

    if not os.path.exists(path):
        raise CommandError(f"no such file: {path}")
    check_regular_file(path)


def _console():
    from rich.console import Console

    class _PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError  # `main` ends quietly with status 0 (rich would exit 1)

    return _PipeConsole(file=sys.stdout, width=max(100, _width()), soft_wrap=False)


def _width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def _bytes(n: int) -> str:
    from keras_blockreuse.report import format_bytes

    return format_bytes(n)


_COMMANDS = {"inspect": _inspect, "diff": _diff, "convert": _convert, "verify": _verify}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["build_parser", "compare", "describe", "main"]
