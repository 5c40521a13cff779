"""First contact: the README's two commands are the ones CI runs, and the first one (runtime
install only, no dev extra) installs every third-party module imported at module level by
the package, train.py and evaluate.py. Parsed from the source, no install needed."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from "
                              "Python 3.11 on")

ROOT = Path(__file__).resolve().parents[1]
OWN = {"fast_ast_jax", "configs", "__future__"}


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps}


def module_level_imports(path: Path) -> set[str]:
    """Top-level names of the modules `path` imports at module level (not inside functions,
    where a lazy optional dependency such as TensorFlow may live)."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - OWN - set(sys.stdlib_module_names)


def entry_files() -> list[Path]:
    return sorted((ROOT / "fast_ast_jax").rglob("*.py")) + [ROOT / "train.py",
                                                            ROOT / "evaluate.py"]


def test_module_level_imports_are_runtime_dependencies():
    runtime = runtime_distributions()
    dists = packages_distributions()
    missing = []
    for path in entry_files():
        for top in sorted(module_level_imports(path)):
            provided_by = {_norm(d) for d in dists.get(top, [top])}
            if not provided_by & runtime:
                missing.append(f"{top} (imported by {path.relative_to(ROOT)}; installed by "
                               f"{sorted(provided_by)})")
    assert not missing, ("module-level imports missing from [project].dependencies, so the "
                         "README's first command (no dev extra) fails: " + "; ".join(missing))


def test_the_check_sees_an_import_that_is_not_declared(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nimport numpy as np\nfrom grain import python\n"
                      "from fast_ast_jax import cli\n\ndef f():\n    import tensorflow\n")
    assert module_level_imports(source) == {"numpy", "grain"}
    assert "numpy" in runtime_distributions()


def _readme_command():
    spec = importlib.util.spec_from_file_location("readme_command",
                                                  ROOT / ".ci" / "readme_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_command


def test_ci_runs_the_readme_commands():
    readme_command = _readme_command()
    first, tests = readme_command("first"), readme_command("tests")
    # the first command: a new venv, the runtime install only, then the demo
    assert "pip install -q -e . " in first and "[dev]" not in first
    assert "train.py --config configs/demo.py" in first and "evaluate.py" in first
    assert '-e ".[dev]"' in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command.py first" in ci and "readme_command.py tests" in ci
    with pytest.raises(SystemExit, match="0 blocks marked"):
        readme_command("first", text="```bash\npip install .\n```")
