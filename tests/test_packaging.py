"""The install matches every documented command.

- whatever `python sweeps/which_blocks.py` imports (the detection task's pycocotools
  included) is installed by the README's Quickstart line, `pip install -e ".[sweeps]"`;
- `.[dev]` installs everything CI tests (the JAX backend, tf-keras for real Keras 2 files,
  keras-hub);
- `.ci/run` runs the install and test steps of the README's Quickstart commands verbatim,
  and nothing before them but making the virtual environment.
"""

import ast
import importlib.metadata
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements) -> set[str]:
    """Normalised distribution names (PEP 503) of requirement strings."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", r).group()).lower()
            for r in requirements}


def _extra(name: str) -> set[str]:
    """An extra's distributions, with the project's own extras it names expanded."""
    out = set()
    for requirement in _project()["optional-dependencies"][name]:
        own = re.fullmatch(r"keras-blockreuse\[([\w,]+)\]", requirement)
        if own:
            for extra in own.group(1).split(","):
                out |= _extra(extra)
        else:
            out |= _names([requirement])
    return out


def _imported_modules(paths) -> set[str]:
    """Top-level modules imported anywhere (also inside functions) in these Python files."""
    modules = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"keras_blockreuse", "__future__"}


def _sweep_files() -> list[str]:
    files = [os.path.join(ROOT, "sweeps", "which_blocks.py")]
    for folder in ("sweep", "detection"):
        base = os.path.join(ROOT, "keras_blockreuse", folder)
        files += [os.path.join(base, n) for n in sorted(os.listdir(base)) if n.endswith(".py")]
    return files


def test_the_quickstart_install_covers_every_import_of_the_sweep():
    installed = _names(_project()["dependencies"]) | _extra("sweeps")
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules(_sweep_files())):
        if module not in distributions:
            missing[module] = "not installed here, so no distribution known"
            continue
        names = _names(distributions[module])
        if not names & installed:
            missing[module] = sorted(names)
    # Keras's own dependencies need no declaration of ours.
    keras_needs = _names(importlib.metadata.requires("keras") or [])
    missing = {m: d for m, d in missing.items() if not set(d) <= keras_needs}
    assert not missing, f"imported by the sweep but not installed by .[sweeps]: {missing}"
    assert "pycocotools" in _extra("sweeps")  # the detection task's mAP


def test_the_dev_extra_installs_everything_ci_tests():
    dev = _extra("dev")
    for name in ("jax", "tf-keras", "keras-hub", "pycocotools", "ray", "pytest",
                 "hypothesis", "ruff"):
        assert name in dev, name
    assert "keras-hub" in _extra("hub")


def test_ci_runs_the_readmes_install_and_test_steps_verbatim():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, flags=re.S)
    assert commands == ['pip install -e ".[sweeps]" && python sweeps/which_blocks.py',
                        'pip install -e ".[dev]" && python -m pytest']
    steps = [step for command in commands for step in command.split(" && ")
             if step.startswith("pip install") or step == "python -m pytest"]
    first = next(i for i, line in enumerate(ci) if line.startswith(("pip", "python -m")))
    # Before them only the virtual environment is made; after them, ruff.
    assert ci[first:first + len(steps)] == steps, ci[first:]
    assert all(line.startswith(("set ", "cd ", "export ", "python3 -m venv", "source "))
               for line in ci[:first]), ci[:first]
    assert ci[first + len(steps)] == "ruff check ."
    assert "ruff check ." in readme
