"""The engine and the measurement package import without the web stack (Django, Celery...)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("django", "celery", "channels", "kombu")

_PROBE = """
import importlib, json, pkgutil, sys
imported = []
for package_name in ("adaptation.netadapt", "devices.measure"):
    package = importlib.import_module(package_name)
    imported.append(package_name)
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        if info.name.endswith(".__main__"):  # a script: importing it runs the CLI
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
forbidden = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
print(json.dumps({"imported": imported, "forbidden": forbidden}))
"""


def test_engine_and_measurement_import_without_the_web_stack():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "-c", _PROBE % (FORBIDDEN,)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    imported = set(report["imported"])
    # The walk really covered the submodules (so the check means something).
    assert {"adaptation.netadapt.loop", "adaptation.netadapt.graph", "adaptation.netadapt.export",
            "adaptation.netadapt.cli", "devices.measure.local",
            "devices.measure.signature"} <= imported
    assert report["forbidden"] == []
