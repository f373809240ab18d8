"""Run a command against an older tree and the working tree in turn, the order alternating.

    .venv/bin/python scripts/ab_tree.py --base HEAD~1 --pairs 3 --grep "drain of" -- \
        .venv/bin/python scripts/probe_drain.py --rounds 2

The files that differ between `--base` and the working tree (`git diff --name-only BASE`, tracked
files only) are swapped in place: "base" runs with `--base`'s versions, "work" with the working
tree's, and the working tree is put back however the run ends. Pairs alternate their order
(base, work | work, base | …): on this machine the second run of a pair tends to be the faster,
and a change measured always second once won six of seven pairs without ever running
(docs/performance.md, session 19). Prints each run's side and the output lines matching `--grep`
(every line without it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path


def changed_files(root: Path, base: str) -> list[str]:
    out = subprocess.run(["git", "diff", "--name-only", base, "--"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    return [name for name in out.splitlines() if name]


def version_at(root: Path, base: str, name: str) -> bytes | None:
    """The file as `base` has it; None where it did not exist there."""
    done = subprocess.run(["git", "show", f"{base}:{name}"], cwd=root, capture_output=True)
    return done.stdout if done.returncode == 0 else None


def order(pairs: int) -> list[str]:
    """base, work, then work, base, …: each side first in half of the pairs."""
    return [side for k in range(pairs) for side in (("base", "work") if k % 2 == 0 else ("work", "base"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the tree to compare with (a commit, e.g. HEAD)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--grep", default="", help="print only the output lines matching this regular expression")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run, from the repository root")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    names = changed_files(root, args.base)
    if not names:
        parser.error(f"the working tree does not differ from {args.base}")
    work = {name: (root / name).read_bytes() if (root / name).exists() else None for name in names}
    base = {name: version_at(root, args.base, name) for name in names}
    pattern = re.compile(args.grep) if args.grep else None

    def put(files: dict[str, bytes | None]) -> None:
        for name, content in files.items():
            path = root / name
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)

    print(f"{len(names)} files differ from {args.base}: {', '.join(names)}", flush=True)
    try:
        for side in order(args.pairs):
            put(base if side == "base" else work)
            print(f"== {side}", flush=True)
            done = subprocess.run(command, cwd=root, capture_output=True, text=True)
            for line in (done.stdout + done.stderr).splitlines():
                if pattern is None or pattern.search(line):
                    print(line, flush=True)
            if done.returncode:
                print(f"   (exit status {done.returncode})", flush=True)
    finally:
        put(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
