"""Regenerate the Python code of the gRPC contract: ``python -m protos.generate``.

Generated from the repository root so that the ``*_pb2_grpc.py`` modules import their
``*_pb2`` module by its package path (``protos.ink.v1``). The drift test in
``tests/test_protos.py`` runs the same command into a temporary folder and compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("protos/ink/v1/matcher.proto",)


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc on every contract file; return the paths of the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *[str(ROOT / p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see its message above")
    generated = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        generated += [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2.pyi",
                      out_dir / f"{stem}_pb2_grpc.py"]
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
