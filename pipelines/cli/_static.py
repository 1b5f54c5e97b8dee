"""Config defaults and module constants read from the source, without importing the module.

`hyvid <command> --help` states every default (config field defaults, flag choices such as
`FLOW_METHODS`), and those live in stage modules that import torch, MLflow, Lance and OpenCV:
seconds of imports to print a page of text. This module reads them from the module's syntax tree
instead (literals, names bound at module level or imported from other hyvid modules, simple
arithmetic, `field(default=...)`), so defaults keep their one home and `--help` imports no stage.
A value it cannot evaluate so (a call) is imported instead: slower, never wrong. The tests check
that every value read equals the imported one, and that no `--help` needs an import.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import logging
import operator
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

# Every "module:name" read since the process started -> the reader that read it (`constant`,
# `config_defaults`, `signature_defaults`), and those that needed an import (tests assert none do).
READ: dict[str, str] = {}
IMPORTED: set[str] = set()

_CONTAINERS = {"dict": dict, "list": list, "tuple": tuple, "set": set}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod}


class _Unresolved(Exception):
    """The expression is not a literal, a known name or a simple operation on them."""


def _locate(module: str) -> tuple[str, bool] | None:
    """The source file of a hyvid module and whether it is a package (None: there is none). Found on
    disk below `hyvid.<top>`: find_spec("a.b.c") would import a.b, and hyvid.pipelines.data.synth imports OpenCV."""
    parts = module.split(".")
    if parts[0] != "hyvid" or len(parts) < 2:
        return None
    spec = importlib.util.find_spec(".".join(parts[:2]))
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    folder = folder.joinpath(*parts[2:-1])
    if len(parts) == 2:
        return str(folder / "__init__.py"), True
    if (folder / parts[-1] / "__init__.py").is_file():
        return str(folder / parts[-1] / "__init__.py"), True
    if (folder / f"{parts[-1]}.py").is_file():
        return str(folder / f"{parts[-1]}.py"), False
    return None


@functools.lru_cache(maxsize=None)
def _tree(module: str) -> tuple[ast.Module, bool]:
    """The module's syntax tree, and whether it is a package (relative imports resolve against it)."""
    path, is_package = _locate(module) or (None, False)
    if path is None:
        raise _Unresolved(f"no hyvid source for {module}")
    return ast.parse(Path(path).read_text(encoding="utf-8"), path), is_package


@functools.lru_cache(maxsize=None)
def _bindings(module: str) -> dict[str, ast.AST]:
    """Module-level name -> the node that binds it last (an assignment's value, an import, a def)."""
    tree, _ = _tree(module)
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            for alias in node.names:
                out[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            out[node.name] = node
    return out


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    _, is_package = _tree(module)
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _name(module: str, name: str) -> Any:
    """The value `name` has at module level in `module` (a `_Module` for an imported module)."""
    node = _bindings(module).get(name)
    if node is None:
        raise _Unresolved(f"{module}.{name} is not bound at module level")
    if isinstance(node, ast.ImportFrom):
        src = _absolute(module, node)
        for alias in node.names:
            if (alias.asname or alias.name) == name:
                if _locate(src) is None:
                    raise _Unresolved(f"{name} comes from {src}, outside hyvid")
                if _locate(f"{src}.{alias.name}") is not None:  # `from hyvid.models import registry as R`
                    return _Module(f"{src}.{alias.name}")
                return _name(src, alias.name)
    if isinstance(node, ast.Import):
        return _Module(next(a.name for a in node.names if (a.asname or a.name.split(".")[0]) == name))
    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
        raise _Unresolved(f"{module}.{name} is a {type(node).__name__}")
    return _eval(module, node)


@dataclasses.dataclass(frozen=True)
class _Module:
    """An imported hyvid module in an expression (`R.SPATIAL_CNN`): attributes resolve in its source."""

    name: str


def _eval(module: str, node: ast.AST) -> Any:
    """The value of a constant expression of `module`'s source (or `_Unresolved`)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [x for e in node.elts for x in (_eval(module, e.value) if isinstance(e, ast.Starred)
                                                 else [_eval(module, e)])]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):  # {**A, "k": v}: a None key unpacks
        return {k2: v2 for k, v in zip(node.keys, node.values, strict=True)
                for k2, v2 in (_eval(module, v).items() if k is None else [(_eval(module, k), _eval(module, v))])}
    if isinstance(node, ast.Name):
        return _name(module, node.id)
    if isinstance(node, ast.Attribute):
        owner = _eval(module, node.value)
        if isinstance(owner, _Module):
            return _name(owner.name, node.attr)
        raise _Unresolved(f"attribute {node.attr} of a value")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(module, node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(module, node.left), _eval(module, node.right))
    raise _Unresolved(f"{type(node).__name__} in {module}")


def _field_default(module: str, value: ast.AST | None) -> Any:
    """A dataclass field's default: MISSING, its value, or `field(default=...)` / `default_factory`."""
    if value is None:
        return dataclasses.MISSING
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        kw = {k.arg: k.value for k in value.keywords}
        if "default" in kw:
            return _eval(module, kw["default"])
        factory = kw.get("default_factory")
        if isinstance(factory, ast.Lambda):
            return _eval(module, factory.body)
        if isinstance(factory, ast.Name) and factory.id in _CONTAINERS:
            return _CONTAINERS[factory.id]()
        if factory is None:
            return dataclasses.MISSING
        raise _Unresolved("a default_factory that is not a lambda or a builtin container")
    return _eval(module, value)


def _class(module: str, name: str) -> ast.ClassDef:
    node = _bindings(module).get(name)
    if isinstance(node, ast.ImportFrom):
        src = _absolute(module, node)
        return _class(src, next(a.name for a in node.names if (a.asname or a.name) == name))
    if not isinstance(node, ast.ClassDef):
        raise _Unresolved(f"{module}.{name} is not a class")
    if node.bases:
        raise _Unresolved(f"{module}.{name} has base classes")
    return node


def _static_fields(module: str, name: str) -> dict[str, Any]:
    out = {}
    for node in _class(module, name).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "ClassVar" in ast.unparse(node.annotation):
                continue
            out[node.target.id] = _field_default(module, node.value)
    return out


def _static_signature(module: str, qualname: str) -> dict[str, Any]:
    cls_name, _, method = qualname.rpartition(".")
    body = _class(module, cls_name).body if cls_name else _tree(module)[0].body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == method:
            args = node.args
            out: dict[str, Any] = {}
            positional = [*args.posonlyargs, *args.args]
            for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True):
                out[a.arg] = _eval(module, d)
            for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if d is not None:
                    out[a.arg] = _eval(module, d)
            return out
    raise _Unresolved(f"no function {qualname} in {module}")


def _defining(module: str, name: str) -> str:
    """The module whose source binds `name` itself (following `from X import name` inside hyvid)."""
    node = _bindings(module).get(name)
    if isinstance(node, ast.ImportFrom):
        src = _absolute(module, node)
        original = next(a.name for a in node.names if (a.asname or a.name) == name)
        if _locate(src) is not None and original == name:
            return _defining(src, name)
    return module


def _isolated(module: str, name: str) -> Any:
    """`name` computed by running its defining module alone, when that imports only the standard library
    (`MAX_CLASSES = len(CATALOGUE)`): importing it would run its package's __init__ (OpenCV)."""
    home = _defining(module, name)
    tree, _ = _tree(home)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = ["." if node.level else (node.module or "").split(".")[0]]
        else:
            continue
        if any(r != "__future__" and r not in sys.stdlib_module_names for r in roots):
            raise _Unresolved(f"{home} imports {roots}, not only the standard library")
    path, _ = _locate(home) or ("", False)
    spec = importlib.util.spec_from_file_location(f"_hyvid_static.{home}", path)
    if spec is None or spec.loader is None:
        raise _Unresolved(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and typing look their module up while the class is made
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return getattr(mod, name)


def _imported(target: str) -> Any:
    module, _, name = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _read(reader: str, target: str, static, real, *, use_loaded: bool) -> Any:
    """`static(module, name)`, or `real(the imported object)` when the source cannot say it."""
    READ.setdefault(target, reader)
    module, _, name = target.partition(":")
    if use_loaded and module in sys.modules:  # imported anyway: the real value costs nothing
        return real(_imported(target))
    try:
        return static(module, name)
    except (_Unresolved, SyntaxError, OSError) as e:
        if static is _name:
            try:
                return _isolated(module, name)
            except (_Unresolved, SyntaxError, OSError):
                pass
        log.debug("reading %s by importing it (%s)", target, e)
        IMPORTED.add(target)
        return real(_imported(target))


def constant(target: str, *, use_loaded: bool = True) -> Any:
    """A module-level constant, `"hyvid.pipelines.data.video:FLOW_METHODS"`."""
    return _read("constant", target, _name, lambda v: v, use_loaded=use_loaded)


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's field defaults, read from the class (MISSING for required fields)."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING for f in dataclasses.fields(cls)}


def config_defaults(target: str, *, use_loaded: bool = True) -> SimpleNamespace:
    """A config dataclass's field defaults (MISSING for required fields), `"hyvid.pipelines.train:TrainConfig"`."""
    fields = _read("config_defaults", target, _static_fields, dataclass_defaults, use_loaded=use_loaded)
    return SimpleNamespace(**fields)


def signature_defaults(target: str, *, use_loaded: bool = True) -> dict[str, Any]:
    """A function's (or method's) parameter defaults, `"hyvid.store.feature_store:FeatureStore.similar"`."""
    def real(fn: Any) -> dict[str, Any]:
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    return _read("signature_defaults", target, _static_signature, real, use_loaded=use_loaded)
