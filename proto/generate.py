"""Generate the Python stubs of the wire contract with grpcio-tools (``make proto``).

    python proto/generate.py            # writes proto/l1pca/v1/l1pca_pb2{,_grpc}.py{,i}
    python proto/generate.py --out DIR  # writes them under DIR (the freshness test uses this)

The stubs are committed. They import each other as ``l1pca.v1.*``, the proto package, and
pyproject.toml maps the Python package ``l1pca.v1`` to ``proto/l1pca/v1``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTOS = ["l1pca/v1/l1pca.proto"]
OUTPUTS = ["l1pca/v1/l1pca_pb2.py", "l1pca/v1/l1pca_pb2.pyi", "l1pca/v1/l1pca_pb2_grpc.py"]


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on :data:`PROTOS`; return the files written."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *[str(ROOT / p) for p in PROTOS]]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out / p for p in OUTPUTS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: proto/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
