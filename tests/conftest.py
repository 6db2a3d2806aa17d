"""Shared fixtures: a real S3 endpoint (moto's server on loopback), run URIs over every
backend, and quiet, isolated Prefect settings."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest

logging.getLogger("distributed").setLevel(logging.WARNING)  # Dask's INFO chatter buries failures

# Before anything imports torch / xgboost / prefect (NOTES.md: 2 cores, isolated Prefect).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
_PREFECT_HOME = tempfile.mkdtemp(prefix="trainaudit-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_API_URL", "")
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (port chosen by the OS); yields its endpoint URL and
    points the AWS environment at it, as s3fs and zarr do in their own tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the moto server; yields ``s3://<bucket>``."""
    import s3fs

    name = f"ta-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture()
def local_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="trainaudit-test-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["memory", "local", "s3"])
def run_uri(request: pytest.FixtureRequest, local_dir: str) -> str:
    """A fresh run URI on each backend: memory://, a local path, s3:// on moto."""
    kind = request.param
    name = f"run-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        return f"memory://{name}"
    if kind == "local":
        return os.path.join(local_dir, name)
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/runs/{name}"
