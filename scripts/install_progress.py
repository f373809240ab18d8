"""Run `pip install` and show its progress in one line (`make venv` on a first run).

    python scripts/install_progress.py -- python -m pip install -e '.[dev,embedded]'

pip's own output is a screen of lines a minute long, and `--quiet` is a silent minute. Here one
line names the package pip is at and how many it has collected (redrawn on a terminal, a line per
phase elsewhere); pip's stderr passes through untouched, and when pip fails its whole output is
printed. The exit status is pip's.
"""

from __future__ import annotations

import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    tty = sys.stdout.isatty()
    started, collected, phase, lines = time.monotonic(), 0, "", []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as pip:
        assert pip.stdout is not None
        for line in pip.stdout:
            lines.append(line)
            if line.startswith("Collecting "):
                collected += 1
                status, now = f"collecting ({collected})", line.split()[1]
            elif line.startswith("Installing collected packages"):
                count = line.count(",") + 1
                status, now = "installing", f"{count} package{'s' if count > 1 else ''}"
            elif line.startswith("Building"):
                status, now = "building", line.split()[-1]
            else:
                continue
            if tty:
                print(f"\r\033[K  {status} {now}", end="", flush=True)
            elif status.split()[0] != phase:
                print(f"  {status} {now} …", flush=True)
            phase = status.split()[0]
    if tty:
        print("\r\033[K", end="")
    if pip.returncode:
        sys.stdout.writelines(lines)
        return pip.returncode
    print(f"  done in {time.monotonic() - started:.0f}s ({collected} packages)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
