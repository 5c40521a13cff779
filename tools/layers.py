"""Folder-level import arrows of fast_ast_jax, and the ones that run back up the layers.

    python tools/layers.py [--all] [--walk]

Every import of a fast_ast_jax module (module level or inside a function) is an arrow
from the importing unit to the imported one; a unit is a top-level folder (audio/,
models/, ...) or a top-level module. Units sit in the layers of LAYERS; an arrow to a
higher layer runs back up (a lower part depending on a part built on it). A folder's
`__main__.py` is a command, in the top layer, whatever its folder.

--walk follows `config` from `train.loop.train_and_evaluate`: depth first, in call
order, into every package function that a call passes `config` (or `config.<field>`)
to; it prints the functions met and counts the climbs (a function whose layer is above
the previous function's) and the visits to model building (BUILDERS). A call that cannot
be resolved statically (a method of an object, e.g. the model registry's
`kind.from_config(config, ...)`) is listed as models.<kind>.<name> and not followed.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "fast_ast_jax"
ROOT = Path(sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv
            else Path(__file__).resolve().parents[1]) / PACKAGE

# Lower layers must not import higher ones.
LAYERS = {
    "audio": 0, "sharding": 0, "patches": 0,
    "models": 1, "bundle": 1, "convert": 1,
    "packing": 2, "data": 2,
    # file formats and inference libraries that training and the commands use
    "formats": 3, "checkpoints": 3, "distill": 3, "windows": 3, "maps": 3, "viz": 3,
    "bench": 3,
    "train": 4,
    # the small-data recipe: stages of the trainer, dump, export and the result table
    "recipe": 5,
    # entry modules: the commands
    "cli": 5, "predict": 5, "embed": 5, "export": 5, "__main__": 5,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The folder or top-level module of `module` ("__main__" for a folder's command)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else parts[0]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[str]:
    """fast_ast_jax modules imported anywhere in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith(PACKAGE):
            for a in node.names:  # `from pkg import module` imports the module
                full = f"{node.module}.{a.name}"
                out.append(full if full in known else node.module)
    return out


def arrows() -> set[tuple[str, str]]:
    mods = modules()
    out = set()
    for name, path in mods.items():
        for target in imports(path, set(mods)):
            a, b = unit(name), unit(target)
            if a != b and b != PACKAGE and a != PACKAGE:
                out.add((a, b))
    return out


def upward(edges) -> list[tuple[str, str]]:
    missing = sorted({u for e in edges for u in e} - set(LAYERS))
    if missing:
        sys.exit(f"error: units {missing} have no layer in tools/layers.py LAYERS; add them")
    return sorted((a, b) for a, b in edges if LAYERS[b] > LAYERS[a])


# --- the walk of `config` -----------------------------------------------------------

def _functions() -> dict[str, tuple[str, ast.FunctionDef, dict[str, str]]]:
    """qualified name -> (module, def, names imported into that module -> qualified)."""
    out = {}
    mods = modules()
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        names = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith(PACKAGE):
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(PACKAGE):
                        names[a.asname or a.name] = a.name
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local = dict(names)
                out[f"{name}.{node.name}"] = (name, node, local)
        for node in tree.body:  # module functions callable by bare name
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for key, (mod, _, local) in out.items():
                    if mod == name:
                        local.setdefault(node.name, f"{name}.{node.name}")
    return out


def _passes_config(call: ast.Call, names: set[str]) -> bool:
    def is_config(e):
        while isinstance(e, (ast.Attribute, ast.Subscript)):
            e = e.value
        return isinstance(e, ast.Name) and e.id in names
    return any(is_config(a) for a in call.args) or any(
        is_config(k.value) for k in call.keywords)


def _resolve(func: ast.expr, local: dict[str, str], funcs) -> str | None:
    if isinstance(func, ast.Name):
        q = local.get(func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        base = local.get(func.value.id)
        q = f"{base}.{func.attr}" if base else None
    else:
        return None
    return q if q in funcs else None


# functions that build a model (or a throwaway one to check a config)
BUILDERS = ("build_model", "build_elastic_model", "create_ast", "create_cnn", "from_config",
            "_check_model", "check_config")


def walk(start: str = f"{PACKAGE}.train.loop.train_and_evaluate") -> list[str]:
    funcs = _functions()
    model_functions = {q.rsplit(".", 1)[1] for q in funcs if f"{PACKAGE}.models." in q}
    seen, order = set(), []

    def visit(q):
        order.append(q)
        if q in seen:
            return
        seen.add(q)
        mod, node, local = funcs[q]
        params = {a.arg for a in node.args.args + node.args.kwonlyargs}
        names = {p for p in params if "config" in p}
        if not names:
            return
        calls = sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            if _passes_config(call, names):
                target = _resolve(call.func, local, funcs)
                if target is None and isinstance(call.func, ast.Attribute) and \
                        call.func.attr in model_functions:
                    # a call through the model registry (kind.check, entry.from_config):
                    # a visit to models/, counted once per call site
                    target = f"{PACKAGE}.models.<kind>.{call.func.attr}"
                    order.append(target)
                    continue
                if target:
                    visit(target)

    visit(start)
    return order


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="list every arrow")
    parser.add_argument("--walk", action="store_true", help="walk config from train_and_evaluate")
    parser.add_argument("--root", default=".", help="repository root to read (default: this one)")
    args = parser.parse_args(argv)
    edges = arrows()
    up = upward(edges)
    if args.all:
        for a, b in sorted(edges):
            print(f"{a} -> {b}" + ("   (runs back up)" if (a, b) in up else ""))
    print(f"{len(edges)} folder-level arrows, {len(up)} running back up"
          + (": " + ", ".join(f"{a} -> {b}" for a, b in up) if up else ""))
    if args.walk:
        order = walk()
        layer = lambda q: LAYERS[unit(q.split(".<")[0] if ".<" in q else q.rsplit(".", 1)[0])]
        climbs = sum(layer(b) > layer(a) for a, b in zip(order, order[1:]))
        builds = sum(q.rsplit(".", 1)[1] in BUILDERS for q in order)
        for q in order:
            print(f"  {layer(q)} {q.removeprefix(PACKAGE + '.')}")
        print(f"walk of config: {len(order)} functions, {climbs} climbs back up, "
              f"{builds} visits to model building")


if __name__ == "__main__":
    main()
