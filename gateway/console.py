"""The web console's static files (built from `web/` into `gateway/webroot/`), served at `/console/`.

These routes sit in front of the API catch-all and outside its authentication: the files are
public, and everything the console shows comes from the API it calls as the signed-in user.
A path that is not a file is a client route of the single-page app and gets `index.html`.
Hashed assets (`_app/immutable/`) are cached for a year; `index.html` is revalidated, so a new
build reaches browsers on the next load. `FileResponse` sends the committed `.br`/`.gz` siblings
to clients that accept them.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEBROOT = Path(__file__).resolve().parent / "webroot"
PREFIX = "/console"

_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_PAGE_HEADERS = {
    "Cache-Control": _REVALIDATE,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def add_routes(app: web.Application, root: Path = WEBROOT) -> None:
    async def home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    async def asset(request: web.Request) -> web.StreamResponse:
        return _serve(root, request.match_info["path"])

    app.router.add_get("/", home)
    app.router.add_get(PREFIX, home)
    app.router.add_get(PREFIX + "/{path:.*}", asset)


def _serve(root: Path, path: str) -> web.StreamResponse:
    index = root / "index.html"
    if not index.is_file():
        raise web.HTTPNotFound(text="the console is not built: run `make web`")
    target = (root / path).resolve()
    if path and target.is_relative_to(root) and target.is_file() and not target.name.endswith((".gz", ".br")):
        immutable = target.is_relative_to(root / "_app" / "immutable")
        headers = {"Cache-Control": _IMMUTABLE, "X-Content-Type-Options": "nosniff"} if immutable else _PAGE_HEADERS
        return web.FileResponse(target, headers=headers)
    if path.startswith("_app/"):
        # An asset of another build (a tab opened before a deploy): a 404, not a page in its place.
        raise web.HTTPNotFound()
    return web.FileResponse(index, headers=_PAGE_HEADERS)  # a client-side route
