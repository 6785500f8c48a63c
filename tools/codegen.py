"""Generate everything the .proto files imply: `python tools/codegen.py [OUT]`.

The one codegen recipe, called by `make protos` and by the Dockerfile:

  OUT/python/video2mp3/...   Python stubs (messages, gRPC, .pyi): the packages
                             video2mp3.auth.v1 and video2mp3.media.v1, which the
                             project's install maps beside its own folders
  OUT/descriptor.pb          the descriptor set Envoy's gRPC-JSON transcoder reads
  OUT/openapi.json           the REST surface as OpenAPI 3.0 (tools/openapi.py), which
                             Envoy serves at /openapi.json
  OUT/third_party/google/... google/api and google/rpc protos, copied from the
                             googleapis-common-protos wheel so protoc and buf can
                             see them offline (never committed)

OUT defaults to gen/ beside protos/. Needs grpcio-tools and
googleapis-common-protos (the `dev` extra).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# google/* protos our .proto files (and Envoy's rich error bodies) import.
THIRD_PARTY = [
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/httpbody.proto",
    "google/api/field_behavior.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
]
# Not imported by our protos, but packed into the descriptor set so Envoy can
# render google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo) as JSON.
DESCRIPTOR_EXTRAS = ["google/rpc/status.proto", "google/rpc/error_details.proto"]


def _protoc(*args: str) -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    argv = ["protoc", f"-I{include}", *args]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


def generate(out: Path) -> None:
    import google.api

    site = Path(google.api.__path__[0]).parent.parent
    if out.exists():
        shutil.rmtree(out)
    third_party = out / "third_party"
    for rel in THIRD_PARTY:
        dst = third_party / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site / rel, dst)

    ours = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    python = out / "python"
    python.mkdir(parents=True)
    includes = [f"-I{PROTOS}", f"-I{third_party}"]
    _protoc(*includes, f"--python_out={python}", f"--pyi_out={python}",
            f"--grpc_python_out={python}", *ours)
    # protoc writes modules only. Each folder of modules (video2mp3/auth/v1, ...)
    # becomes a regular package; the folders above them stay namespaces, as
    # `video2mp3` and `video2mp3.auth` are also made of the project's own folders.
    for folder in {p.parent for p in (python / "video2mp3").rglob("*.py")}:
        (folder / "__init__.py").touch()
    _protoc(*includes, "--include_imports", "--include_source_info",
            f"--descriptor_set_out={out / 'descriptor.pb'}", *ours, *DESCRIPTOR_EXTRAS)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import openapi

    openapi.main(str(out / "descriptor.pb"), str(out / "openapi.json"))


if __name__ == "__main__":
    os.chdir(ROOT)
    generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "gen")
