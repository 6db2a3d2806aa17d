"""Finding runs under a prefix (local and S3) and idempotent audit bookkeeping."""

from __future__ import annotations

import os

import numpy as np
import pytest

from trainaudit.capture import CaptureConfig, Recorder
from trainaudit.flows._audit import write_outputs
from trainaudit.flows._runs import already_audited, audit_dir, find_runs, slug
from trainaudit.tasks import AuditResult, Finding


def _run(uri: str, steps: int = 5) -> None:
    with Recorder(uri, config=CaptureConfig.full()) as rec:
        for s in range(steps):
            rec.record("losses/loss", 1.0 / (s + 1), collection="losses", step=s)
            rec.record("weights/w", np.full((2, 3), s, dtype=np.float32), collection="weights", step=s)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_find_runs_and_already_audited(backend: str, local_dir: str, request: pytest.FixtureRequest) -> None:
    base = os.path.join(local_dir, "runs") if backend == "local" else request.getfixturevalue("s3_bucket") + "/runs"
    out = os.path.join(local_dir, "audits") if backend == "local" else base.rsplit("/", 1)[0] + "/audits"
    _run(f"{base}/run-a")
    _run(f"{base}/run-b", steps=3)
    if backend == "local":
        os.makedirs(os.path.join(base, "not-a-run"))
    refs = find_runs(base)
    assert [r.run_id for r in refs] == ["run-a", "run-b"]
    assert all(r.status == "complete" for r in refs)
    assert refs[0].fingerprint == {"status": "complete", "committed_steps": {"0": 5}}
    assert find_runs(f"{base}/run-b")[0].run_id == "run-b"  # a prefix that is itself a run

    ref = refs[0]
    assert not already_audited(out, ref)
    result = AuditResult(run={"uri": ref.uri, "run_id": ref.run_id, "fingerprint": ref.fingerprint},
                         findings=[Finding(rule="AllZero", status="ok", severity="warning", message="fine")])
    paths = write_outputs(result, audit_dir(out, ref.run_id))
    assert paths["report"].endswith("report.html")
    assert already_audited(out, ref)
    _run(f"{base}/run-a", steps=2)  # the run is rewritten: a new state is audited again
    assert not already_audited(out, find_runs(base)[0])


def test_slug_makes_artifact_keys() -> None:
    assert slug("My Run #1 / <script>") == "my-run-1-script"
    assert slug("") == "run"
