"""The committed stubs (proto/l1pca/v1/*_pb2*.py) are what grpcio-tools makes of the .proto today."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lines that name the generator's version: a newer grpcio-tools may change them without the
# contract changing, so they are compared with the version blanked.
_VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|\s+\d+,\s*$)", re.M)


def _normalised(text):
    return _VERSION_LINES.sub("<version>", text)


def test_generated_stubs_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the 'test' extra")
    proc = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sys.path.insert(0, str(ROOT / "proto"))
    try:
        from generate import OUTPUTS
    finally:
        sys.path.remove(str(ROOT / "proto"))
    stale = [rel for rel in OUTPUTS if _normalised((tmp_path / rel).read_text())
             != _normalised((ROOT / "proto" / rel).read_text())]
    assert not stale, f"stubs out of date with l1pca.proto: {stale}; run `make proto` and commit them"


def test_stubs_import_as_the_proto_package():
    from l1pca.v1 import l1pca_pb2, l1pca_pb2_grpc

    assert l1pca_pb2.DESCRIPTOR.package == "l1pca.v1"
    service = l1pca_pb2.DESCRIPTOR.services_by_name["L1PCA"]
    assert {m.name for m in service.methods} >= {"Fit", "Transform", "ScoreOutliers"}
    assert hasattr(l1pca_pb2_grpc, "L1PCAStub")
    # Matrices are bytes with their shape and dtype, never repeated doubles.
    fields = {f.name: f for f in l1pca_pb2.Matrix.DESCRIPTOR.fields}
    assert fields["data"].type == fields["data"].TYPE_BYTES
    assert set(fields) == {"rows", "cols", "dtype", "data"}
