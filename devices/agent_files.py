"""Files the server hands to agents: a request's ONNX files, and the agent program itself.

- ``request_archive``: the zip an agent downloads for one measurement request -- ``manifest.json``,
  ``layers/<index>.onnx`` for each signature the device's table still lacks (index into
  ``MeasurementRequest.signatures``), ``networks/<index>.onnx`` for each whole network (index
  into ``MeasurementRequest.networks``: the file stored with the request, ``devices.request_files``,
  which its asker exported the way every ONNX file of ours is). The layers are the same one-layer graphs
  the server's own CPU times (devices.measure.builders.signature_onnx), so both tables hold the
  same thing.
- ``agent_zipapp``: ``netadapt-agent.pyz``, a Python zip application of ``devices/agent`` plus
  the torch-free measurement core it imports (``devices/measure/__init__.py`` and the modules
  that file names: signatures, statistics, the timing protocol), with a stub
  ``devices/__init__.py``: nothing of Django, torch or the rest of the server.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from pathlib import Path

from devices.measure.builders import signature_input_shape, signature_onnx
from devices.models import MeasurementRequest
from devices.requests import network_file_bytes, pending_signatures, request_signatures

DEVICES_DIR = Path(__file__).resolve().parent
AGENT_DIR = DEVICES_DIR / "agent"
#: The measurement core the agent imports, relative to devices/ (tests/test_layers.py checks
#: that these files import nothing else of ours and no torch).
SHARED_FILES = ("measure/__init__.py", "measure/protocol.py", "measure/signature.py", "measure/stats.py")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same sources give the same download
ZIPAPP_NAME = "netadapt-agent.pyz"

ZIPAPP_MAIN = '''"""NetAdapt Studio's agent: python netadapt-agent.pyz --server URL --pair CODE (then no arguments)."""
from devices.agent.cli import main

raise SystemExit(main())
'''
ZIPAPP_PACKAGE_INIT = '''"""The part of NetAdapt Studio's devices package that the agent program needs."""
'''


def _add(archive: zipfile.ZipFile, name: str, data: bytes | str, compress: int = zipfile.ZIP_DEFLATED) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


# --------------------------------------------------------------------------- a request's files


def request_archive(request: MeasurementRequest, runtime_version: str | None) -> tuple[bytes, dict]:
    """(zip bytes, manifest) of the layers still missing from the table of ``runtime_version``.

    Without a runtime version (an agent that never said hello) every layer is included. A request
    stored without its networks' files (``devices.requests.files_missing``) is a ValueError.
    """
    if runtime_version:
        layers = pending_signatures(request, runtime_version)
    else:
        layers = list(enumerate(request_signatures(request)))
    networks = network_file_bytes(request)
    manifest = {"request": request.pk, "runtime": request.runtime, "threads": request.threads,
                "runtime_version": runtime_version or "", "layers": [], "networks": []}
    buffer = io.BytesIO()
    # Random float32 weights do not compress: store them as they are.
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, signature in layers:
            name = f"layers/{index}.onnx"
            _add(archive, name, signature_onnx(signature), zipfile.ZIP_STORED)
            manifest["layers"].append({"index": index, "file": name, "key": signature.key(),
                                       "input_shape": list(signature_input_shape(signature))})
        shape = [int(size) for size in request.example_shape]
        for index, (description, data) in enumerate(zip(request.networks, networks)):
            name = f"networks/{index}.onnx"
            _add(archive, name, data, zipfile.ZIP_STORED)
            manifest["networks"].append({"index": index, "file": name, "label": description.get("label", ""),
                                         "input_shape": shape})
        _add(archive, "manifest.json", json.dumps(manifest, indent=1))
    return buffer.getvalue(), manifest


# --------------------------------------------------------------------------- the agent download


def agent_sources() -> list[tuple[str, Path]]:
    """(name in the zipapp, source file) of everything the agent runs."""
    files = [(f"devices/agent/{path.name}", path) for path in sorted(AGENT_DIR.glob("*.py"))]
    files += [(f"devices/{name}", DEVICES_DIR / name) for name in SHARED_FILES]
    return files


_cache_lock = threading.Lock()
_cache: dict[str, bytes] = {}


def agent_zipapp() -> bytes:
    """The agent as a zip application (``python netadapt-agent.pyz``), built once per source state."""
    sources = [(name, path.read_bytes()) for name, path in agent_sources()]
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in sources)).hexdigest()
    with _cache_lock:
        if digest not in _cache:
            buffer = io.BytesIO()
            buffer.write(b"#!/usr/bin/env python3\n")  # what zipapp.create_archive writes first
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                _add(archive, "__main__.py", ZIPAPP_MAIN)
                _add(archive, "devices/__init__.py", ZIPAPP_PACKAGE_INIT)
                for name, data in sources:
                    _add(archive, name, data)
            _cache.clear()
            _cache[digest] = buffer.getvalue()
        return _cache[digest]
