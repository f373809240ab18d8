"""Where the client finds the platform and its key: arguments first, then `INNOSYSTEM_URL` and
`INNOSYSTEM_API_KEY`, then a TOML file (`INNOSYSTEM_CONFIG`, default
`~/.config/innosystem/client.toml`) with `url = "…"` and `api_key = "…"`. Keep that file private
(chmod 600): it holds a secret."""

from __future__ import annotations

import os
import stat
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"


def config_path() -> Path:
    return Path(os.environ.get("INNOSYSTEM_CONFIG") or Path.home() / ".config" / "innosystem" / "client.toml")


@dataclass(frozen=True)
class Settings:
    url: str
    api_key: str

    @classmethod
    def load(cls, url: str | None = None, api_key: str | None = None, path: Path | None = None) -> Settings:
        file: dict[str, object] = {}
        path = path or config_path()
        if (url is None or api_key is None) and path.is_file():
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.warn(f"{path} holds an API key and other users may read it: chmod 600 {path}",
                              stacklevel=2)
            with path.open("rb") as f:
                file = tomllib.load(f)
        return cls(
            url=(url or os.environ.get("INNOSYSTEM_URL") or str(file.get("url") or "") or DEFAULT_URL).rstrip("/"),
            api_key=api_key or os.environ.get("INNOSYSTEM_API_KEY") or str(file.get("api_key") or ""),
        )
