"""End to end across processes: a real ``prefect server``, a separate Dask ``LocalCluster``
with worker processes, a run on the moto S3 server, and ``trainaudit audit --dask-address``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainaudit.flows._demo import train_faulty_mlp

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def prefect_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "prefect-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"prefect server did not start: {(tmp_path / 'prefect-server.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_cli_audits_an_s3_run_on_an_existing_cluster_with_a_real_server(
    prefect_server: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    uri = f"{s3_bucket}/runs/faulty-mlp"
    train_faulty_mlp(uri, steps=24)

    # Workers inherit the environment: they must talk to the real server (NOTES.md).
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "audit"
        proc = subprocess.run(
            [sys.executable, "-m", "trainaudit.flows.cli", "audit", uri, "--dask-address", cluster.scheduler_address,
             "--out", str(out)],
            env={**os.environ, "PREFECT_API_URL": prefect_server}, capture_output=True, text=True, timeout=400,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the faulty run has critical findings
    assert "verdict: CRITICAL" in proc.stdout
    doc = json.loads((out / "audit.json").read_text())
    assert doc["run"]["uri"] == uri
    assert {f["rule"] for f in doc["findings"] if f["status"] == "triggered"} >= {"DeadRelu"}
    assert (out / "report.html").stat().st_size > 1000

    # The server recorded the flow run, completed.
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        assert prefect_server in str(client.api_url)
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["audit-run"])))
    assert runs and runs[0].state is not None and runs[0].state.is_completed()
