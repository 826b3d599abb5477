"""Static checks of the source (``ast``, not regular expressions) for the security rules.

- ``unsafe_torch_loads``: ``torch.load`` calls that do not pass ``weights_only=True``
  literally, however torch or its ``load`` was imported (``import torch as th``,
  ``from torch import load``). A call with ``**kwargs`` cannot be checked and is reported.
- ``archive_extractions``: calls that write archive members to disk (``.extract``,
  ``.extractall``, ``shutil.unpack_archive``), so member names would become paths.
"""
from __future__ import annotations

import ast
from pathlib import Path

SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "build", "dist", "node_modules"}
EXTRACTING_CALLS = {"extract", "extractall", "unpack_archive", "_extract_member"}


def python_files(root: Path) -> list[Path]:
    """Every .py file under ``root`` outside hidden, cache and build folders."""
    return sorted(p for p in root.rglob("*.py")
                  if not any(part in SKIP_DIRS or part.startswith(".")
                             for part in p.relative_to(root).parts[:-1]))


def _torch_aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names bound to the torch module, names bound to torch.load) anywhere in ``tree``."""
    modules, loads = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch":
                    modules.add(a.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            loads.update(a.asname or a.name for a in node.names if a.name == "load")
    return modules, loads


def _is_torch_load(func: ast.expr, modules: set[str], loads: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in loads
    if isinstance(func, ast.Attribute) and func.attr == "load":
        target = func.value
        if isinstance(target, ast.Attribute) and target.attr == "serialization":
            target = target.value  # torch.serialization.load
        return isinstance(target, ast.Name) and target.id in modules
    return False


def _weights_only_true(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg == "weights_only":
            return isinstance(kw.value, ast.Constant) and kw.value.value is True
    return False


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every torch.load call without a literal ``weights_only=True``."""
    tree = ast.parse(source, filename)
    modules, loads = _torch_aliases(tree)
    return [f"{filename}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _is_torch_load(node.func, modules, loads)
            and not _weights_only_true(node)]


def archive_extractions(source: str, filename: str = "<source>") -> list[str]:
    """``file:line call`` of every call that extracts archive members to the file system."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = (node.func.attr if isinstance(node.func, ast.Attribute)
                else node.func.id if isinstance(node.func, ast.Name) else None)
        if name in EXTRACTING_CALLS:
            out.append(f"{filename}:{node.lineno} {name}")
    return out
