"""`scripts/ab_tree.py`: a command run against an older tree and the working tree in turn, each
side first in half of the pairs, and the working tree put back afterwards, even where the older
tree lacked a file or the command failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_sides_alternate_their_order_and_the_working_tree_is_put_back(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "which.txt").write_text("old\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "which.txt").write_text("new\n")  # changed in the working tree
    (repo / "added.txt").write_text("only here\n")  # tracked, not in the base
    _git(repo, "add", "added.txt")
    show = "import pathlib, sys; p = pathlib.Path('added.txt'); " \
           "print('side', pathlib.Path('which.txt').read_text().strip(), p.exists()); sys.exit(3)"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "ab_tree.py"), "--base", "HEAD", "--pairs", "2",
                           "--grep", "^side", "--", sys.executable, "-c", show],
                          cwd=repo, capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("==", "side"))]
    assert lines == ["== base", "side old False", "== work", "side new True",
                     "== work", "side new True", "== base", "side old False"]
    assert "(exit status 3)" in done.stdout  # a failing command is reported, the pairs go on
    assert (repo / "which.txt").read_text() == "new\n" and (repo / "added.txt").read_text() == "only here\n"
