"""The committed stubs are what proto/ generates now (scripts/gen_python_stubs.sh)."""

import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT


def test_committed_stubs_match_the_proto_files():
    committed = ROOT / "clients" / "python" / "laser_router_client" / "_pb" / "laser" / "v1"
    with tempfile.TemporaryDirectory() as out:
        subprocess.check_call(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
             f"--grpc_python_out={out}", *sorted(str(p) for p in (ROOT / "proto" / "laser" / "v1").glob("*.proto"))]
        )
        for generated in sorted((Path(out) / "laser" / "v1").glob("*.py")):
            text = generated.read_text().replace(
                "\nfrom laser.v1 import", "\nfrom laser_router_client._pb.laser.v1 import"
            )
            assert text == (committed / generated.name).read_text(), (
                f"{generated.name} is stale: run scripts/gen_python_stubs.sh"
            )
