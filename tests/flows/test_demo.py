"""The README's main job, end to end: ``trainaudit demo`` (ephemeral Prefect, temporary local
Dask cluster, local store), as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)


def test_demo_trains_audits_and_reports_three_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "trainaudit.flows.cli", "demo", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdicts = {}
    for name in ("healthy-mlp", "faulty-mlp", "deep-xgboost"):
        doc = json.loads((out / "audits" / name / "audit.json").read_text())
        assert (out / "audits" / name / "report.html").is_file()
        verdicts[name] = (doc["verdict"], {f["rule"] for f in doc["findings"] if f["status"] == "triggered"})
        assert f"report:  {out / 'audits' / name / 'report.html'}" in proc.stdout
    assert verdicts["healthy-mlp"][0] not in ("critical",), verdicts
    assert {"DeadRelu", "VanishingGradient"} <= verdicts["faulty-mlp"][1]
    assert "TreeDepth" in verdicts["deep-xgboost"][1]
