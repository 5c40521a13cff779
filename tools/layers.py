"""Folder-level import arrows of fast_ast_jax, and the ones that run back up the layers.

    python tools/layers.py [--all] [--walk]

Every import of a fast_ast_jax module (module level or inside a function) is an arrow
from the importing unit to the imported one; a unit is a top-level folder (audio/,
models/, ...) or a top-level module. Units sit in the layers of LAYERS; an arrow to a
higher layer runs back up (a lower part depending on a part built on it). A folder's
`__main__.py` is part of its folder: a command that imports what its folder must not
belongs in a command module of the top layer, not in a lower folder.

--walk follows the config from `train.loop.train_and_evaluate`: the ConfigDict and the
run's description it is read into (DESCRIPTION's classes). Depth first, in call order,
it enters every package function that a call passes the description or a part of it to
(`run`, `run.optim`, `config.data.source`, ...), and goes on through the parameters and
locals that hold the description: named `config`/`run`, annotated with a description
class, or taking a part of one (`e = run.elastic`). It resolves calls through function
tables (`KIND_CHECKS.get(name)`), locals (`f = a if c else b`), methods of the
description and functools.partial; a call through another object that names a models
function (the model registry's `kind.from_config(config)`) is listed as
models.<kind>.<name> and not entered. It prints each function met with the fields passed
to it and counts
  climbs: a function whose layer is above the previous function's;
  files revisited for the same field: the walk enters a module again from another one
    (calls one after the other from one function are one visit; a return is none) and
    passes it a field that an earlier visit got;
  visits to model building (BUILDERS).
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
    "audio": 0, "sharding": 0, "patches": 0, "atomic": 0,
    "models": 1, "bundle": 1, "convert": 1,
    "packing": 2, "data": 2,
    # file formats and inference libraries that training and the commands use
    "checkpoints": 3, "teacher_logits": 3, "windows": 3, "streaming": 3, "inference": 3,
    "embeddings": 3, "result_files": 3, "exported": 3, "maps": 3, "viz": 3, "bench": 3,
    "train": 4,
    # the commands (python -m fast_ast_jax.<name>) and what only they use; recipe/: the
    # small-data recipe (stages of the trainer, teacher logits, export, a result table)
    "cli": 5, "file_commands": 5, "predict": 5, "embed": 5, "export": 5, "distill": 5,
    "stream": 5, "recipe": 5,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The folder or top-level module of `module` (a folder's `__main__` is its folder's)."""
    parts = module.split(".")
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


# --- the walk of the config -----------------------------------------------------------

# The module whose dataclasses describe a run (the config, read once); ROOT_CLASS is the
# whole description, the classes of its fields are its parts.
DESCRIPTION, ROOT_CLASS = f"{PACKAGE}.train.spec", "Run"
# Calls that convert a value and keep what it is part of.
CONVERSIONS = ("dict", "list", "tuple", "int", "float", "str", "bool", "sorted")


def _imported_names(tree) -> dict[str, str]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE):
                    names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module == "functools":
            names.update({a.asname or a.name: f"functools.{a.name}" for a in node.names})
    return names


def _annotation(node) -> str | None:
    """The class an annotation names (`Run`, `Run | None`, "Run"), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.BinOp):  # X | None
        return _annotation(node.left) or _annotation(node.right)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


class Code:
    """The package's functions (and the methods of the description's classes), the
    function tables (module-level dicts of functions), and the description's classes."""

    def __init__(self):
        self.funcs: dict[str, tuple[str, ast.FunctionDef, dict[str, str]]] = {}
        self.names: dict[str, dict[str, str]] = {}  # module -> its names -> qualified
        self.tables: dict[str, list[str]] = {}
        self.parts: dict[str, str] = {}  # description class -> its path ("" = the whole)
        self.methods: dict[str, set[str]] = {}  # description class -> method names
        for name, path in modules().items():
            tree = ast.parse(path.read_text())
            names = _imported_names(tree)
            defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef))]
            local = {**{d.name: f"{name}.{d.name}" for d in defs}, **names}
            self.names[name] = local
            for d in defs:
                self.funcs[f"{name}.{d.name}"] = (name, d, local)
            for node in tree.body:
                target = node.targets[0] if isinstance(node, ast.Assign) else getattr(
                    node, "target", None)
                if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict) and \
                        node.value.values and all(isinstance(v, ast.Name) and v.id in local
                                                  for v in node.value.values):
                    self.tables[f"{name}.{target.id}"] = [local[v.id] for v in node.value.values]
                    local[target.id] = f"{name}.{target.id}"
            if name == DESCRIPTION:
                self._describe(tree, local)
        self.model_functions = {q.rsplit(".", 1)[1] for q in self.funcs
                                if q.startswith(f"{PACKAGE}.models.")}

    def _describe(self, tree, local) -> None:
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.parts[ROOT_CLASS] = ""
        for node in classes[ROOT_CLASS].body:
            if isinstance(node, ast.AnnAssign) and _annotation(node.annotation) in classes:
                self.parts[_annotation(node.annotation)] = node.target.id
        for cls in self.parts:
            defs = [n for n in classes[cls].body if isinstance(n, ast.FunctionDef)]
            self.methods[cls] = {d.name for d in defs}
            for d in defs:
                self.funcs[f"{DESCRIPTION}.{cls}.{d.name}"] = (DESCRIPTION, d, local)


class _Function:
    """What one function knows of the description: name -> path ("" = the whole,
    "optim", "elastic.rows", ...). A parameter is the description when its name holds
    "config" or is "run", or its annotation is a class of the description; a local when it
    is named so, or takes a part of one (`e = run.elastic`), or the result of a function
    annotated to return a description class (`run = read_config(config)`)."""

    def __init__(self, code: Code, qualified: str, bound: dict[str, str]):
        self.code, (self.module, self.node, self.local) = code, code.funcs[qualified]
        self.paths: dict[str, str] = {}
        args = self.node.args
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            cls = _annotation(a.annotation) if a.annotation else None
            if "config" in a.arg or a.arg == "run" or cls in code.parts:
                self.paths[a.arg] = bound.get(a.arg, code.parts.get(cls, ""))
        if "." in qualified.removeprefix(DESCRIPTION + ".") and qualified.startswith(
                DESCRIPTION):  # a method of a description class: self is that part
            cls = qualified.removeprefix(DESCRIPTION + ".").split(".")[0]
            self.paths[args.args[0].arg] = code.parts[cls]
        for node in ast.walk(self.node):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                        if isinstance(t, ast.Name):
                            self._assign(t.id, node.value, target)

    def _assign(self, name: str, value, target) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            value = value.elts[target.elts.index(next(t for t in target.elts
                                                      if getattr(t, "id", None) == name))]
        path = self.path(value)
        if path is None and isinstance(value, ast.Call):
            q = self.resolve(value.func)
            ret = self.code.funcs[q[0]][1].returns if q and q[0] in self.code.funcs else None
            cls = _annotation(ret) if ret is not None else None
            path = self.code.parts.get(cls)
        if path is None and ("config" in name or name == "run"):
            path = ""
        if path is not None:
            self.paths.setdefault(name, path)

    def path(self, expr) -> str | None:
        """The description path `expr` holds (a chain from a tracked name), or None."""
        if isinstance(expr, ast.Name):
            return self.paths.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = self.path(expr.value)
            return None if base is None else f"{base}.{expr.attr}".lstrip(".")
        if isinstance(expr, ast.Subscript):
            base = self.path(expr.value)
            key = expr.slice
            if base is None:
                return None
            return (f"{base}.{key.value}".lstrip(".")
                    if isinstance(key, ast.Constant) and isinstance(key.value, str) else base)
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Name) and expr.func.id in CONVERSIONS and expr.args:
                return self.path(expr.args[0])
            if isinstance(expr.func, ast.Attribute) and not self.resolve(expr.func):
                return self.path(expr.func.value)  # a method of the value: config.to_dict()
        return None

    def passed(self, expr) -> set[str]:
        """Description paths anywhere in an argument, not inside package calls (their own
        visits)."""
        path = self.path(expr)
        if path is not None:
            return {path}
        if isinstance(expr, ast.Call) and self.resolve(expr.func):
            return set()
        if isinstance(expr, ast.Lambda):
            return set()
        return set().union(*(self.passed(c) for c in ast.iter_child_nodes(expr)))

    def resolve(self, func) -> list[str]:
        """The package functions a call's `func` may be: a function, a method of a
        description part, every function of a function table, each function a local may
        hold."""
        funcs, tables = self.code.funcs, self.code.tables
        if isinstance(func, ast.Name):
            q = self.local.get(func.id)
            return [q] if q in funcs else self._local_functions(func.id)
        if isinstance(func, ast.Attribute):
            base = self.path(func.value)
            if base is not None:
                for cls, part in self.code.parts.items():
                    if part == base and func.attr in self.code.methods[cls]:
                        return [f"{DESCRIPTION}.{cls}.{func.attr}"]
                return []
            if isinstance(func.value, ast.Name):
                module = self.local.get(func.value.id)
                q = f"{module}.{func.attr}"  # or a name the module imports
                q = q if q in funcs else self.code.names.get(module, {}).get(func.attr)
                return [q] if q in funcs else []
        if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name):
            return tables.get(self.local.get(func.value.id), [])
        return []

    def _local_functions(self, name: str) -> list[str]:
        """The functions a local may hold: `f = a if cond else b`, `check = TABLE.get(key)`,
        `hook = TABLE[key]`."""
        out = []
        for node in ast.walk(self.node):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                    for t in node.targets):
                v = node.value
                options = [v.body, v.orelse] if isinstance(v, ast.IfExp) else [v]
                for v in options:
                    if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute):
                        v = v.func.value  # TABLE.get(...)
                    elif isinstance(v, ast.Subscript):
                        v = v.value  # TABLE[...]
                    q = self.local.get(getattr(v, "id", None))
                    out += self.code.tables.get(q, [q] if q in self.code.funcs else [])
        return out

    def calls(self):
        """(targets, bound paths per target, paths passed) of each call that passes the
        description or a part of it, in source order; functools.partial(f, ...) is a call
        of f."""
        nodes = sorted((n for n in ast.walk(self.node) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in nodes:
            func, args = call.func, list(call.args)
            if self.local.get(getattr(func, "id", None)) == "functools.partial" or (
                    isinstance(func, ast.Attribute) and func.attr == "partial"
                    and getattr(func.value, "id", None) == "functools"):
                func, args = args[0], args[1:]
            passed = set().union(*(self.passed(a) for a in args),
                                 *(self.passed(k.value) for k in call.keywords))
            if not passed:
                continue
            targets = self.resolve(func)
            if not targets and isinstance(func, ast.Attribute) and \
                    func.attr in self.code.model_functions:
                # a call through an object (the model registry: kind.from_config(config))
                yield f"{PACKAGE}.models.<kind>.{func.attr}", {}, passed
            for target in targets:
                yield target, self._bind(target, args, call.keywords), passed

    def _bind(self, target: str, args, keywords) -> dict[str, str]:
        a = self.code.funcs[target][1].args
        params = [p.arg for p in a.posonlyargs + a.args]
        if "." in target.removeprefix(DESCRIPTION + ".") and target.startswith(DESCRIPTION):
            params = params[1:]  # a method: self is the part it is called on
        out = {}
        for p, arg in zip(params, args):
            if self.path(arg) is not None:
                out[p] = self.path(arg)
        for k in keywords:
            if k.arg and self.path(k.value) is not None:
                out[k.arg] = self.path(k.value)
        return out


def walk(start: str = f"{PACKAGE}.train.loop.train_and_evaluate"
         ) -> list[tuple[str, frozenset[str], str | None]]:
    """(function, description paths passed to it, caller) in visiting order: depth first,
    in call order, into every package function that a call passes the description (or a
    part of it) to; a function is entered once, listed at every call."""
    code = Code()
    seen, order = set(), []

    def visit(q, bound, passed, caller):
        order.append((q, frozenset(passed), caller))
        if q in seen or q not in code.funcs:  # a registry call is listed, not entered
            return
        seen.add(q)
        for target, binding, paths in _Function(code, q, bound).calls():
            visit(target, binding, paths, q)

    visit(start, {"config": ""}, {""}, None)
    return order


def file_of(q: str) -> str:
    """The module of a function or description method (models for a registry call)."""
    if q.startswith(DESCRIPTION + "."):
        return DESCRIPTION
    return q.split(".<")[0] if ".<" in q else q.rsplit(".", 1)[0]


def revisits(order) -> list[tuple[int, str, str]]:
    """(position, module, path) where the walk visits a module again and passes it a path
    an earlier visit got. A visit to a module is a run of consecutive functions in it that
    the walk enters from another module (several calls from one function into one
    module, one after the other, are one visit; a return to the caller is none)."""
    out, given = [], {}
    for i, (q, paths, caller) in enumerate(order):
        module = file_of(q)
        if caller is None or file_of(caller) == module or (
                i and file_of(order[i - 1][0]) == module):
            given.setdefault(module, set()).update(paths)
            continue
        out += [(i, module, p) for p in sorted(paths & given.get(module, set()))]
        given.setdefault(module, set()).update(paths)
    return out


# functions that build a model (or a throwaway one to check a config)
BUILDERS = ("build_model", "from_fields", "build_elastic_model", "create_ast", "create_cnn",
            "from_config", "_check_model", "check_config")


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
        layer = lambda q: LAYERS[unit(file_of(q))]
        climbs = sum(layer(b) > layer(a) for (a, *_), (b, *_) in zip(order, order[1:]))
        builds = sum(q.rsplit(".", 1)[1] in BUILDERS for q, *_ in order)
        back = revisits(order)
        marks = {i: f"   <- {m.removeprefix(PACKAGE + '.')} again for "
                 + ", ".join(repr(p or "config") for _, mm, p in back if _ == i and mm == m)
                 for i, m, _ in back}
        for i, (q, paths, _) in enumerate(order):
            fields = ", ".join(sorted(p or "(all)" for p in paths))
            print(f"  {layer(q)} {q.removeprefix(PACKAGE + '.')} [{fields}]{marks.get(i, '')}")
        print(f"walk of config: {len(order)} functions in {len({file_of(q) for q, *_ in order})}"
              f" files, {climbs} climbs back up, {len(back)} files revisited for the same "
              f"field, {builds} visits to model building")


if __name__ == "__main__":
    main()
