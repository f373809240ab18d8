"""deploy/Dockerfile and .dockerignore, checked statically (no Docker engine in tests or CI)."""

from __future__ import annotations

import re

from deploy_support import DEPLOY, ROOT

COMPILERS = ("gcc", "g++", "build-essential", "clang", "make", "cc ", "python3-dev", "libpq-dev")


def _stages() -> list[tuple[str, list[tuple[str, str]]]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            stages.append((image, []))
        elif stages:
            stages[-1][1].append((word, rest))
    return stages


def test_multi_stage_slim_python_final_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final_image, final = stages[-1]
    assert final_image == "python:3.11-slim"
    assert any(w == "COPY" and r.startswith("--from=builder") and "/opt/venv" in r for w, r in final)
    builder = stages[0][1]
    assert any(w == "RUN" and "pip install" in r and "/opt/venv" in r for w, r in builder)


def test_final_stage_is_non_root_without_compilers() -> None:
    _, final = _stages()[-1]
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for word, rest in final:
        if word == "RUN":
            assert not any(c in rest for c in COMPILERS), rest
            assert "apt-get install" not in rest


def test_entrypoint_is_innosystem() -> None:
    _, final = _stages()[-1]
    assert [r for w, r in final if w == "ENTRYPOINT"] == ['["innosystem"]']


def test_dockerignore_keeps_data_venvs_and_caches_out() -> None:
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in (".data/", ".venv/", "**/__pycache__/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
                   ".hypothesis/", "tests/", "deploy/compose/.env"):
        assert needed in lines, needed
    copied = {"innosystem", "services", "gateway", "pyproject.toml", "README.md"}
    assert not copied & {line.rstrip("/") for line in lines}
