"""Generate Python code, typed stubs, the descriptor set, the OpenAPI document and the Postman
collection and environment (docs/postman/) from protos/.

    python scripts/protos.py            # write into the tree
    python scripts/protos.py --check    # exit 1 if the committed output is stale

Proto path = proto package = Python import path, so `protos/innosystem/jobs/v1/jobs.proto`
becomes `innosystem/jobs/v1/jobs_pb2.py` and imports need no rewriting.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DESCRIPTORS = "innosystem/descriptors.binpb"
OPENAPI = "docs/openapi.json"
POSTMAN = ("docs/postman/collection.json", "docs/postman/environment.json")


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    grpc_include = str(importlib.resources.files("grpc_tools") / "_proto")
    site = sysconfig.get_paths()["purelib"]  # googleapis-common-protos ships google/api/*.proto
    (out / "innosystem").mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins, found without an activated venv
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTOS}", f"-I{site}", f"-I{grpc_include}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--mypy_out={out}", f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / DESCRIPTORS}", "--include_imports", "--include_source_info",
        *files,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode != 0:  # protoc's own chatter is shown only when it failed
        sys.exit(f"protoc failed:\n{done.stdout}{done.stderr}")
    for pkg_dir in {p.parent for p in (out / "innosystem").rglob("*_pb2.py")}:
        d = pkg_dir
        while d != out:
            (d / "__init__.py").touch()
            d = d.parent
    sys.path.insert(0, str(ROOT))
    from gateway.openapi import render_openapi  # the gateway serves the same document
    from gateway.postman import render_postman

    (out / OPENAPI).parent.mkdir(parents=True, exist_ok=True)
    document = render_openapi((out / DESCRIPTORS).read_bytes())
    (out / OPENAPI).write_text(document)
    (out / POSTMAN[0]).parent.mkdir(parents=True, exist_ok=True)
    for path, text in zip(POSTMAN, render_postman(document), strict=True):
        (out / path).write_text(text)


def generated_files(tree: Path) -> list[Path]:
    found = [p for p in (tree / "innosystem").rglob("*") if p.name.endswith((".py", ".pyi"))
             and ("_pb2" in p.name or (p.name == "__init__.py" and p.parent.name == "v1"))]
    found += [tree / DESCRIPTORS, tree / OPENAPI, *(tree / p for p in POSTMAN)]
    return sorted(p.relative_to(tree) for p in found if p.exists())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed output is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = generated_files(out)
        if args.check:
            stale = [str(p) for p in fresh if not (ROOT / p).exists() or not filecmp.cmp(out / p, ROOT / p, False)]
            extra = sorted(set(map(str, generated_files(ROOT))) - set(map(str, fresh)))
            for p in stale + extra:
                print(f"stale generated file: {p}", file=sys.stderr)
            return 1 if stale or extra else 0
        for p in set(generated_files(ROOT)) - set(fresh):
            (ROOT / p).unlink()
        for p in fresh:
            (ROOT / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / p, ROOT / p)
        print(f"generated {len(fresh)} files from {len(list(PROTOS.rglob('*.proto')))} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
