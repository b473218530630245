"""In a split mode the control plane never imports engine code nor runs pw.x.

Checked in a fresh interpreter, since the test process itself imports engines.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from zpe_api.main import create_app
from zpe_core.settings import Settings

settings = Settings(store_url="memory://", execution_mode="http-pull", pw_command="false")
text = Path("samples/h2_zpe.in").read_text()
with TestClient(create_app(settings)) as client:
    mock = client.post("/calc/zpe/jobs", json={"input_text": text, "engine": "mock"})
    qe = client.post("/calc/zpe/jobs", json={"input_text": text, "engine": "qe"})
engine_modules = sorted(
    m for m in sys.modules
    if (m.startswith("zpe_core.engines.") and m != "zpe_core.engines.base")
    or m.startswith("ase.calculators.espresso")
)
print(json.dumps({"mock": mock.status_code, "qe": qe.status_code, "qe_body": qe.json(),
                  "engine_modules": engine_modules}))
"""


def test_http_pull_api_imports_no_engine_and_needs_qe_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mock"] == 201
    assert out["engine_modules"] == []  # neither the mock nor the qe engine was imported
    assert out["qe"] == 500
    assert out["qe_body"]["code"] == "engine_version_unset"
    assert "ZPE_QE_VERSION" in out["qe_body"]["detail"]
