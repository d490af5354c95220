"""Generates the Python code for proto/escalation/v1 and checks the committed copy for drift.

The generated package lives at ``escalation/v1`` (not ``escalation/api/_pb``) because protoc emits
imports such as ``from escalation.v1 import common_pb2``; placing the output where those imports
already resolve avoids rewriting generated code.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("escalation") / "v1"
INIT_TEXT = '"""Generated from proto/escalation/v1 by `make proto`. Do not edit."""\n'


def _include_dirs() -> list[str]:
    import google.rpc  # googleapis-common-protos ships the .proto files next to the modules

    grpc_tools_protos = resources.files("grpc_tools") / "_proto"
    google_rpc = Path(next(iter(google.rpc.__path__)))
    return [str(PROTO_ROOT), str(grpc_tools_protos), str(google_rpc.parents[1])]


def generate(out_root: Path) -> None:
    """Runs protoc for every proto into out_root/escalation/v1."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "escalation" / "v1").glob("*.proto"))
    target = out_root / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        *(f"-I{d}" for d in _include_dirs()),
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (target / "__init__.py").write_text(INIT_TEXT)


def drift(repo_root: Path = ROOT) -> list[str]:
    """Names of generated files that differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = fresh_root / PACKAGE_DIR
        committed = repo_root / PACKAGE_DIR
        fresh_names = {p.name for p in fresh.iterdir() if p.is_file()}
        committed_names = {p.name for p in committed.iterdir() if p.is_file()} if committed.exists() else set()
        differing = sorted(fresh_names ^ committed_names)
        differing += sorted(
            name
            for name in fresh_names & committed_names
            if not filecmp.cmp(fresh / name, committed / name, shallow=False)
        )
        return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code has drifted")
    args = parser.parse_args()
    if args.check:
        stale = drift()
        if stale:
            sys.exit("generated code is stale, run `make proto`: " + ", ".join(stale))
        print("generated code is current")
        return
    target = ROOT / PACKAGE_DIR
    shutil.rmtree(target, ignore_errors=True)
    generate(ROOT)
    print(f"generated {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
