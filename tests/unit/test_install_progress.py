"""`make venv`'s install progress (scripts/install_progress.py): brief, and pip's exit status kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_progress.py"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_a_line_per_phase_instead_of_pips_screenful() -> None:
    fake_pip = ("for n in range(40): print(f'Collecting pkg{n}==1.0'); print('  Using cached pkg.whl')\n"
                "print('Installing collected packages: a, b, c')\nprint('Successfully installed a b c')")
    done = run(fake_pip)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["  collecting (1) pkg0==1.0 …", "  installing 3 packages …",
                                        done.stdout.splitlines()[-1]]
    assert done.stdout.splitlines()[-1].endswith("(40 packages)")


def test_a_failure_keeps_pips_status_and_shows_its_whole_output() -> None:
    failed = run("import sys; print('Collecting nothing-such'); print('no matching distribution'); sys.exit(3)")
    assert failed.returncode == 3 and "no matching distribution" in failed.stdout
