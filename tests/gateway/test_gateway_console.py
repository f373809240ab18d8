"""The console's static build at /console/: served without credentials, client routes fall back to
index.html, hashed assets are cached for good, nothing outside the build is reachable; and the
committed build is what `make web` produces from web/ (checked where Node is installed)."""

from __future__ import annotations

import filecmp
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import console
from gateway.console import WEBROOT

ASSETS = WEBROOT / "_app" / "immutable"


async def test_root_redirects_to_the_console(client: TestClient) -> None:
    for path in ("/", "/console"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/console/"


async def test_the_console_and_its_client_routes_are_index_html_without_credentials(client: TestClient) -> None:
    index = (WEBROOT / "index.html").read_text()
    for path in ("/console/", "/console/jobs", "/console/jobs/0b5d3c1e-0000-4000-8000-000000000000"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert await resp.text() == index
        assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Frame-Options"] == "DENY"


async def test_hashed_assets_are_immutable_and_sent_compressed(client: TestClient) -> None:
    bundle = next(p for p in ASSETS.glob("*.js"))
    resp = await client.get(f"/console/_app/immutable/{bundle.name}", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and "immutable" in resp.headers["Cache-Control"]
    assert resp.headers.get("Content-Encoding") == "gzip"
    assert await resp.read() == bundle.read_bytes()  # aiohttp's client decodes the gzip
    gone = await client.get("/console/_app/immutable/bundle.0ld8uild.js")  # another build's asset
    assert gone.status == 404


def test_nothing_outside_the_build_is_served(tmp_path: Path) -> None:
    """Paths reach `_serve` as the router decoded them: `..` must not climb out of the build."""
    root = tmp_path / "webroot"
    (root / "_app").mkdir(parents=True)
    (root / "index.html").write_text("index")
    (tmp_path / "secret.txt").write_text("secret")
    for path in ("../secret.txt", str(tmp_path / "secret.txt"), "index.html.gz"):
        served = console._serve(root, path)
        assert isinstance(served, web.FileResponse) and served._path == root / "index.html", path
    with pytest.raises(web.HTTPNotFound):
        console._serve(root, "_app/../../secret.txt")


async def test_the_api_still_demands_credentials(client: TestClient) -> None:
    resp = await client.get("/v1/me")
    assert resp.status == 401


def test_the_committed_build_is_what_make_web_builds(tmp_path: Path) -> None:
    web = Path(__file__).resolve().parents[2] / "web"
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: cannot rebuild the console")
    if not (web / "node_modules").is_dir():
        install = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=web, capture_output=True, text=True)
        if install.returncode != 0:
            pytest.skip(f"npm ci failed (offline?): {install.stderr[-500:]}")
    out = tmp_path / "webroot"
    build = subprocess.run(["npm", "run", "build"], cwd=web, capture_output=True, text=True,
                           env={**os.environ, "CONSOLE_OUT": str(out)}, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    differences = _differences(filecmp.dircmp(out, WEBROOT))
    assert not differences, f"gateway/webroot is stale, run `make web` and commit it: {differences}"


def _differences(cmp: filecmp.dircmp[str]) -> list[str]:
    found = [f"new {name}" for name in cmp.left_only] + [f"gone {name}" for name in cmp.right_only]
    found += [f"changed {name}" for name in cmp.diff_files]
    for sub in cmp.subdirs.values():
        found += _differences(sub)
    return found


def test_the_first_load_is_at_most_300_kb_of_gzipped_javascript() -> None:
    index = (WEBROOT / "index.html").read_text()
    scripts = {WEBROOT / path.removeprefix("/console/") for path in re.findall(r'"(/console/_app/[^"]+\.js)"', index)}
    assert scripts, "index.html names no script"
    size = sum(len(gzip.compress(path.read_bytes(), 9)) for path in scripts)
    assert size <= 300 * 1024, f"{size} bytes of gzipped JavaScript on first load"
