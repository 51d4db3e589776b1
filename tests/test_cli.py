"""The keras-blockreuse command line: output of each command, and one-line errors."""

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from keras_blockreuse import get_blocks, load_blocks, read_blocks, save_blocks
from keras_blockreuse.cli import main
from tests.helpers import randomize, seed_cnn, snapshot

PREFIX = "keras-blockreuse: error: "


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, expected_status=2, match=None):
    assert status == expected_status
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert "Traceback" not in err
    if match:
        assert match in lines[0], lines[0]


@pytest.fixture
def files(tmp_path):
    model = seed_cnn()
    randomize(model, seed=5)
    blocks = save_blocks(model, tmp_path / "a.blocks.h5", metadata={"epoch": 7})
    weights = str(tmp_path / "a.weights.h5")
    model.save_weights(weights)
    garbage = tmp_path / "garbage.blocks.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    return model, blocks, weights, str(garbage)


def test_inspect_block_file(capsys, files):
    model, blocks, _, _ = files
    status, out, err = run(capsys, "inspect", blocks)
    assert status == 0 and err == ""
    for text in ["block_1", "block_2", "dense_1", "dense_2", "block_1_0", "(3, 3, 3, 8)",
                 "float32", '{"epoch": 7}', "keras_version: " + keras.__version__,
                 "model_name: seed_cnn"]:
        assert text in out, text
    total = sum(b.num_params for b in get_blocks(model).values())
    assert f"4 blocks, {total:,} parameters" in out
    # Each block ends in a subtotal row: its name in the block column, the dtype column empty.
    for name, block in get_blocks(model).items():
        [row] = [line for line in out.splitlines() if f"{name} total" in line]
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[0] == f"{name} total" and cells[1:5] == ["", "", "", ""], cells
        assert cells[5] == f"{block.num_params:,}"


def test_inspect_json(capsys, files):
    model, blocks, weights, _ = files
    for path in [blocks, weights]:
        status, out, _ = run(capsys, "inspect", path, "--json")
        assert status == 0
        data = json.loads(out)
        expected = {name: b.num_params for name, b in get_blocks(model).items()}
        assert {b["name"]: b["num_params"] for b in data["blocks"]} == expected
        kernel = data["blocks"][0]["layers"][0]["variables"][0]
        assert kernel["shape"] == [3, 3, 3, 8] and kernel["dtype"] == "float32"
    assert json.loads(run(capsys, "inspect", blocks, "--json")[1])["metadata"] == {"epoch": 7}


def test_inspect_keras_file_with_a_rule(capsys, files):
    _, _, weights, _ = files
    status, out, _ = run(capsys, "inspect", weights, "--blocks", r"^(block_\d)_", "--json")
    assert status == 0
    data = json.loads(out)
    assert [b["name"] for b in data["blocks"]] == ["block_1", "block_2", "dense_1", "dense_2"]
    assert data["format"] == "Keras weights (.weights.h5)"
    assert data["block rule"] == r"^(block_\d)_"


def test_inspect_bad_files(capsys, files, tmp_path):
    _, _, _, garbage = files
    assert_one_line_error(*run(capsys, "inspect", garbage)[::2], match="garbage.blocks.h5")
    assert_one_line_error(*run(capsys, "inspect", str(tmp_path / "missing.h5"))[::2],
                          match="no such file")
    assert_one_line_error(*run(capsys, "inspect")[::2], match="required: file")
    assert_one_line_error(*run(capsys, "frobnicate", "x")[::2], match="invalid choice")
    assert_one_line_error(*run(capsys, "inspect", files[2], "--blocks", "(")[::2],
                          match="neither a preset name")


def test_a_bad_blocks_option_is_blamed_not_the_file(capsys, files, tmp_path):
    """Found by a fresh-user test: `convert FILE OUT --blocks '('` said the file was "damaged
    or not a weights file"; and a rule that places no layer was ignored unsaid, the file
    written grouped otherwise. Both now blame the option, and nothing is written."""
    _, blocks, weights, _ = files
    out = str(tmp_path / "out.blocks.h5")
    for argv in (["convert", weights, out], ["inspect", weights], ["diff", weights, blocks]):
        status, _, err = run(capsys, *argv, "--blocks", "(")
        assert status == 2 and err == (
            f"{PREFIX}argument --blocks: `blocks='('` is neither a preset name ('convnext', "
            "'densenet', 'efficientnet', 'mobilenet', 'mobilenet_v2', 'mobilenet_v3', "
            "'resnet', 'vgg', 'xception']) nor a valid regular expression: missing ), "
            "unterminated subpattern at position 0\n".replace("('convnext'", "(['convnext'"))
        status, _, err = run(capsys, *argv, "--blocks", r"^(stack\d)_")
        assert status == 2 and err == (
            f"{PREFIX}The block rule '^(stack\\d)_' places none of the weighted top-level "
            f"layers of {weights} (block_1_0, block_1_1, block_2_0, block_2_1, dense_1, "
            "dense_2): each would be a block of its own, as if no rule were given. Give a rule "
            "that names some of these layers, or none for the default grouping.\n")
    assert not os.path.exists(out)


def test_diff(capsys, files, tmp_path):
    model, blocks, weights, garbage = files
    status, out, _ = run(capsys, "diff", blocks, weights)
    assert status == 0 and "identical" in out
    kernel = model.get_layer("block_2_1").kernel
    changed = keras.ops.convert_to_numpy(kernel).copy()
    changed[0, 0, 0, 0] += 0.5
    kernel.assign(changed)
    other = save_blocks(model, tmp_path / "b.blocks.h5", only=["block_1", "block_2", "dense_1"])
    status, out, _ = run(capsys, "diff", blocks, other, "--json")
    assert status == 1
    rows = json.loads(out)["differences"]
    assert {"block": "dense_2", "layer": "*", "variable": "*", "status": "only in A"} in rows
    [value_row] = [r for r in rows if r["status"] == "values differ"]
    assert value_row["block"] == "block_2" and value_row["layer"] == "block_2_1"
    assert value_row["max_abs_diff"] == pytest.approx(0.5)
    status, out, _ = run(capsys, "diff", blocks, other)
    assert status == 1 and "values differ" in out and "only in A" in out
    assert out.splitlines()[:2] == [f"A = {blocks}", f"B = {other}"]  # whole, never folded
    assert "2 difference(s)" in out
    assert_one_line_error(*run(capsys, "diff", blocks, garbage)[::2])


def test_diff_says_when_only_the_grouping_differs(capsys, files, tmp_path):
    """Found by a fresh-user test: a keras-hub task's block file against its `.keras` archive
    (same values) gave 5 "differences", `stem ... stage_3 only in A`, `res_net_backbone only in
    B`: the files group their layers otherwise. `diff` now says so and compares the values
    layer by layer (status 1: the files do differ, in their blocks)."""
    model, _, weights, _ = files
    regrouped = save_blocks(model, tmp_path / "r.blocks.h5",
                            blocks={"features": ["block_*"], "head": ["dense_*"]})
    status, out, _ = run(capsys, "diff", regrouped, weights)
    assert status == 1
    assert out.splitlines() == [
        f"A = {regrouped}", f"B = {weights}",
        "The two files group their layers into different blocks:",
        "  A: features, head", "  B: block_1, block_2, dense_1, dense_2",
        "Compared layer by layer instead (6 layers paired by name, or by the last step of "
        "their paths):",
        "the layers, variables and values are identical; only the grouping differs"]
    rows = json.loads(run(capsys, "diff", regrouped, weights, "--json")[1])["differences"]
    assert rows == [{"block": "*", "layer": "*", "variable": "*",
                     "status": "grouped differently", "blocks_a": ["features", "head"],
                     "blocks_b": ["block_1", "block_2", "dense_1", "dense_2"],
                     "layers_paired": 6}]
    kernel = model.get_layer("dense_2").kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) + 0.25)
    other = save_blocks(model, tmp_path / "o.blocks.h5", only=["block_1", "dense_2"])
    rows = json.loads(run(capsys, "diff", regrouped, other, "--json")[1])["differences"]
    assert rows[0]["status"] == "grouped differently" and rows[0]["layers_paired"] == 3
    assert rows[1:] == [
        {"block": "head", "block_b": "dense_2", "layer": "dense_2", "variable": "kernel",
         "max_abs_diff": pytest.approx(0.25), "status": "values differ"},
        *({"block": block, "layer": layer, "variable": "*", "status": "only in A"}
          for block, layer in [("features", "block_2_0"), ("features", "block_2_1"),
                               ("head", "dense_1")])]
    status, out, _ = run(capsys, "diff", regrouped, other)
    assert status == 1 and out.splitlines()[-1] == "4 difference(s) besides the grouping"
    assert "│ head (B: dense_2) │ dense_2   │ kernel   │ values differ │" in out


class _Tempered(keras.Model):
    """A subclassed model holding a variable of its own (a learned temperature)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = keras.layers.Dense(2, name="head")

    def build(self, shape):
        self.temperature = self.add_weight(shape=(), name="temperature", initializer="ones")
        super().build(shape)

    def call(self, x):
        return self.head(x) / self.temperature


def test_convert_and_inspect_say_the_models_own_variables_are_left(capsys, tmp_path):
    """Found by a fresh-user test: a subclassed model's own variable (its `.weights.h5`'s
    root `vars` group) was left out by `convert` ("wrote ...: 1 blocks (head), 6
    parameters", the file holding 7) and by `inspect`, unsaid. Both now say it; a model
    without one says nothing."""
    model = _Tempered()
    model(np.zeros((1, 2), "float32"))
    weights = str(tmp_path / "t.weights.h5")
    model.save_weights(weights)
    said = ("1 variable(s) of the model itself (its own `vars` group), held by no layer: "
            "load_blocks and convert leave them")
    status, out, _ = run(capsys, "convert", weights, str(tmp_path / "t.blocks.h5"))
    assert status == 0
    assert out.splitlines() == [f"wrote {tmp_path / 't.blocks.h5'}: 1 blocks (head), 6 parameters",
                                f"not converted: {said}"]
    status, out, _ = run(capsys, "inspect", weights)
    assert status == 0 and f"not in any block: {said}" in out.splitlines()
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="head")])
    plain.save_weights(str(tmp_path / "p.weights.h5"))
    status, out, _ = run(capsys, "convert", str(tmp_path / "p.weights.h5"),
                         str(tmp_path / "p.blocks.h5"))
    assert status == 0 and len(out.splitlines()) == 1 and "not in any block" not in out


def test_convert(capsys, files, tmp_path):
    model, _, weights, garbage = files
    out_path = str(tmp_path / "converted.blocks.h5")
    status, out, _ = run(capsys, "convert", weights, out_path, "--only", "block_1", "block_2")
    assert status == 0 and "wrote" in out
    info = read_blocks(out_path)
    assert list(info.blocks) == ["block_1", "block_2"]
    assert info.metadata["converted_from"] == weights
    target = seed_cnn(name="target")
    before = snapshot(target)
    assert load_blocks(target, out_path).ok
    for layer in ["block_1_0", "block_1_1", "block_2_0", "block_2_1"]:
        for a, b in zip(model.get_layer(layer).weights, target.get_layer(layer).weights,
                        strict=True):
            assert keras.ops.convert_to_numpy(a).tobytes() == \
                keras.ops.convert_to_numpy(b).tobytes()
    assert all(before[v.path].tobytes() == keras.ops.convert_to_numpy(v).tobytes()
               for v in target.get_layer("dense_2").weights)
    assert run(capsys, "verify", out_path)[0] == 0
    assert_one_line_error(*run(capsys, "convert", garbage, out_path)[::2])
    assert_one_line_error(*run(capsys, "convert", weights, str(tmp_path / "x.h5"))[::2],
                          match="must end in '.blocks.h5'")


def test_inspect_and_convert_use_the_rule_a_blockmodel_archive_records(capsys, tmp_path):
    """A user's report: inspect and convert of a BlockModel's .keras grouped its layers by the
    naming convention (enc_a, enc_b, out), which no load by the model's block names finds."""
    from keras_blockreuse import BlockModel

    def build():
        inputs = keras.Input((8,))
        x = keras.layers.Dense(16, name="enc_a")(inputs)
        x = keras.layers.Dense(16, name="enc_b")(x)
        return BlockModel(inputs, keras.layers.Dense(2, name="out")(x),
                          blocks={"encoder": ["enc_*"], "head": ["out"]})

    model = build()
    randomize(model, seed=9)
    archive = str(tmp_path / "bm.keras")
    model.save(archive)
    status, out, err = run(capsys, "inspect", archive, "--json")
    description = json.loads(out)
    assert [b["name"] for b in description["blocks"]] == ["encoder", "head"]
    assert description["block rule"] == (
        'recorded by its BlockModel: {"encoder": ["enc_*"], "head": ["out"]}')
    converted = str(tmp_path / "bm.blocks.h5")
    status, out, err = run(capsys, "convert", archive, converted)
    assert (status, out, err) == (
        0, f"wrote {converted}: 2 blocks (encoder, head), 450 parameters\n", "")
    target = build()
    assert list(load_blocks(target, converted, only=["encoder"]).loaded) == ["encoder"]
    for name in ("enc_a", "enc_b"):
        for a, b in zip(model.get_layer(name).weights, target.get_layer(name).weights,
                        strict=True):
            assert a.numpy().tobytes() == b.numpy().tobytes()
    status, out, err = run(capsys, "inspect", archive, "--blocks", "^(e|o)", "--json")
    assert [b["name"] for b in json.loads(out)["blocks"]] == ["e", "o"]  # --blocks still rules


def test_verify(capsys, files, tmp_path):
    _, blocks, weights, garbage = files
    status, out, _ = run(capsys, "verify", blocks)
    assert status == 0 and "every checksum matches" in out
    status, out, _ = run(capsys, "verify", weights)
    assert status == 0 and "no checksums" in out
    # Found by a fresh-user test: a `.keras` archive's verify said "this format has no
    # checksums", though the zip CRC-32 of its weights is checked (a flipped byte fails it).
    archive = str(tmp_path / "m.keras")
    files[0].save(archive)
    status, out, _ = run(capsys, "verify", archive)
    assert status == 0 and out.strip() == (
        f"ok: {archive}: 4 blocks, every variable is readable and the archive's zip CRC-32 of "
        "its weights matches (its values have no checksums of their own)")
    with h5py.File(blocks, "a") as f:
        ds = f["block_2/block_2_0"][list(f["block_2/block_2_0"])[0]]
        values = ds[...]
        values.flat[0] += 1
        ds[...] = values
    status, _, err = run(capsys, "verify", blocks)
    assert_one_line_error(status, err, expected_status=1, match="'block_2'")
    assert "corrupt" in err
    assert_one_line_error(*run(capsys, "verify", garbage)[::2], expected_status=1)
    assert_one_line_error(*run(capsys, "verify", str(tmp_path / "none.blocks.h5"))[::2],
                          expected_status=1, match="no such file")


def test_python_dash_m_prints_no_traceback(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 this is no zip")
    result = subprocess.run(
        [sys.executable, "-m", "keras_blockreuse", "inspect", str(bad)],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # TensorFlow's C++ start-up may log to stderr; our message is exactly one line.
    ours = [line for line in result.stderr.splitlines() if line.startswith(PREFIX)]
    assert len(ours) == 1 and "not a valid .keras archive" in ours[0]
    assert np.isscalar(result.returncode)


# --- start-up, --version, closed pipes (issue 14) ---------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version(capsys):
    from keras_blockreuse import __version__

    status, out, err = run(capsys, "--version")
    assert (status, out, err) == (0, f"keras-blockreuse {__version__}\n", "")


def test_block_file_commands_never_import_keras_or_tensorflow(files, tmp_path):
    _, blocks, _, _ = files
    other = str(tmp_path / "other.blocks.h5")
    copied = str(tmp_path / "copied.blocks.h5")
    code = f"""
import json, sys
import keras_blockreuse
from keras_blockreuse.cli import main
loaded = {{"import": [m for m in ("keras", "tensorflow") if m in sys.modules]}}
for argv in (["inspect", {blocks!r}], ["inspect", {blocks!r}, "--json"], ["verify", {blocks!r}],
             ["convert", {blocks!r}, {other!r}, "--only", "block_1"], ["diff", {blocks!r}, {other!r}],
             ["convert", {other!r}, {copied!r}], ["--help"], ["--version"]):
    status = main(argv)
    loaded[" ".join(argv[:1])] = [m for m in ("keras", "tensorflow") if m in sys.modules]
    print("STATUS", argv[0], status, file=sys.stderr)
print(json.dumps(loaded), file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=120)
    lines = result.stderr.splitlines()
    assert result.returncode == 0, result.stderr
    statuses = [line.split()[1:] for line in lines if line.startswith("STATUS")]
    assert statuses == [["inspect", "0"], ["inspect", "0"], ["verify", "0"], ["convert", "0"],
                        ["diff", "1"], ["convert", "0"], ["--help", "0"], ["--version", "0"]]
    assert json.loads(lines[-1]) == {k: [] for k in
                                     ("import", "inspect", "verify", "convert", "diff",
                                      "--help", "--version")}
    assert len(lines) == len(statuses) + 1  # nothing else on stderr: no TensorFlow log
    # What the Keras-free convert wrote is a complete block file, values bit for bit.
    assert list(read_blocks(copied).blocks) == ["block_1"]
    assert read_blocks(copied).backend == "none"
    assert read_blocks(copied).keras_version == keras.__version__
    a, b = (load_blocks(seed_cnn(name=n), p, only=["block_1"]) for n, p in
            (("x", blocks), ("y", copied)))
    assert a.variables_loaded == b.variables_loaded == 4
    assert main(["diff", blocks, copied]) == 1  # only block_1 copied; the rest "only in A"


def _closed_pipe(argv, pipe_size=4096):
    """Runs the command line with stdout a real pipe that is closed after one small read."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, pipe_size)
    proc = subprocess.Popen([sys.executable, "-m", "keras_blockreuse", *argv], stdout=write_end,
                            stderr=subprocess.PIPE, cwd=ROOT)
    os.close(write_end)
    first = os.read(read_end, 100)
    os.close(read_end)  # the reader goes away, as `| head -1` does
    _, err = proc.communicate(timeout=120)
    return proc.returncode, first, err


@pytest.mark.parametrize("json_output", [False, True])
def test_a_closed_pipe_ends_quietly_with_status_0(tmp_path, json_output):
    model = keras.Sequential([keras.Input((2,))] + [L for i in range(60) for L in
                             [keras.layers.Dense(2, name=f"block_{i + 1}_0")]])
    path = save_blocks(model, tmp_path / "long.blocks.h5")
    argv = ["inspect", path] + (["--json"] if json_output else [])
    full = subprocess.run([sys.executable, "-m", "keras_blockreuse", *argv], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert full.returncode == 0 and len(full.stdout) > 5 * 4096  # more than the pipe holds
    status, first, err = _closed_pipe(argv)
    assert first and full.stdout.startswith(first)
    assert (status, err) == (0, b"")


def test_reading_a_keras_file_prints_no_tensorflow_log(files):
    _, _, weights, _ = files
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "keras_blockreuse", "inspect", weights],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "block_1_0" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("name", ["pipe.weights.h5", "pipe.keras", "pipe.h5", "pipe.blocks.h5"])
def test_a_fifo_is_refused_before_keras_is_imported(tmp_path, name):
    """A named pipe given to any command is refused at once, whatever its suffix: before a
    reader (and Keras, for the Keras suffixes) is imported, and without opening it."""
    fifo = str(tmp_path / name)
    os.mkfifo(fifo)
    code = f"""
import sys
from keras_blockreuse.cli import main
status = main(["inspect", {fifo!r}])
print("STATUS", status, [m for m in ("keras", "tensorflow") if m in sys.modules], file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    lines = result.stderr.splitlines()
    assert lines[-1] == "STATUS 2 []", result.stderr
    assert lines[0] == (f"keras-blockreuse: error: {fifo!r} is a named pipe (FIFO), not a regular "
                        "file; refusing to open it (reading it could block forever).")
