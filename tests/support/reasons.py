"""Every ErrorInfo reason the code base can send, found by reading its source (ast): `reason=`
arguments (literals, or module constants by name), the positional argument of helpers (and exceptions)
that take a `reason` parameter, GatewayError's reason, DomainError subclasses' `default_reason`, and the gRPC
code names the gateway falls back to when an upstream sent no reason."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("gateway", "innosystem", "services")
REASON = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def _files() -> Iterator[Path]:
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            if "_pb2" not in path.name and "migrations" not in path.parts:
                yield path


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def reasons() -> set[str]:
    trees = [ast.parse(p.read_text(), str(p)) for p in _files()]
    constants: dict[str, set[str]] = {}  # NAME = "VALUE" anywhere (module or class level)
    positions: dict[str, int] = {"GatewayError": 1, "_status": 2}  # callee name → index of its reason
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        constants.setdefault(target.id, set()).add(node.value.value)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.args]
                if "reason" in names and node.name not in positions:
                    offset = 1 if names and names[0] in ("self", "cls") else 0
                    positions[node.name] = names.index("reason") - offset
            elif isinstance(node, ast.ClassDef):  # an exception whose __init__ takes the reason
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        names = [a.arg for a in item.args.args]
                        if "reason" in names:
                            positions.setdefault(node.name, names.index("reason") - 1)

    def value(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        name = _name(node)
        return constants.get(name, set()) if name else set()

    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "reason":
                        found |= value(kw.value)
                callee = _name(node.func)
                index = positions.get(callee or "")
                if index is not None and 0 <= index < len(node.args):
                    found |= value(node.args[index])
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "default_reason"
                                                      for t in node.targets):
                found |= value(node.value)
    found |= {code.name for code in grpc.StatusCode}
    return {r for r in found if REASON.fullmatch(r) and r != "OK"}
