"""Finding runs under a prefix, and remembering which were audited (for scheduled audits)."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from trainaudit.capture import TrainauditError, open_run
from trainaudit.capture._format import ROOT_ATTR, is_remote, normalize_uri, s3_storage_options

__all__ = ["RunRef", "find_runs", "run_fingerprint", "audit_dir", "already_audited", "slug"]


@dataclass(frozen=True)
class RunRef:
    uri: str
    run_id: str
    status: str
    fingerprint: dict[str, Any]


def _fs(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    if uri.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_storage_options(storage_options))
        return fs, uri[len("s3://") :]
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
        return fs, path
    return fsspec.filesystem("file"), uri


def _is_run_root(fs: Any, path: str) -> bool:
    try:
        with fs.open(posixpath.join(path, "zarr.json"), "rb") as f:
            meta = json.load(f)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return ROOT_ATTR in (meta.get("attributes") or {})


def find_runs(prefix: str, *, storage_options: Mapping[str, Any] | None = None, stale_after: float = 300.0) -> list[RunRef]:
    """The runs at ``prefix`` (if it is a run) or directly under it, sorted by URI."""
    base = normalize_uri(prefix)
    fs, path = _fs(base, storage_options)
    candidates: list[str] = []
    if _is_run_root(fs, path):
        candidates.append(base)
    else:
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            entries = []
        for e in entries:
            if e.get("type") != "directory":
                continue
            child = e["name"].rstrip("/")
            if _is_run_root(fs, child):
                scheme = base.split("://", 1)[0] + "://" if is_remote(base) else ""
                candidates.append(scheme + child if scheme and not child.startswith(scheme) else child)
    refs = []
    for uri in sorted(candidates):
        try:
            run = open_run(uri, storage_options=storage_options, stale_after=stale_after)
        except TrainauditError:
            continue
        refs.append(RunRef(uri=uri, run_id=run.run_id, status=run.status, fingerprint=run_fingerprint(run)))
    return refs


def run_fingerprint(run: Any) -> dict[str, Any]:
    """What identifies the state of a run for idempotent audits: status and committed steps."""
    return {"status": run.status, "committed_steps": {str(r): run.committed_steps(r) for r in run.ranks}}


_SLUG_RE = re.compile(r"[^a-z0-9]+")


def slug(text: str, *, max_len: int = 60) -> str:
    """Lowercase letters, digits and dashes (Prefect artifact keys; folder names)."""
    s = _SLUG_RE.sub("-", text.lower()).strip("-")
    return (s[:max_len].rstrip("-")) or "run"


def audit_dir(out: str, run_id: str) -> str:
    """Where the audit of ``run_id`` goes under ``out``."""
    return posixpath.join(out, slug(run_id, max_len=120)) if is_remote(out) else os.path.join(out, slug(run_id, max_len=120))


def already_audited(out: str, ref: RunRef, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when ``out`` holds an audit of ``ref`` made at the same fingerprint."""
    target = audit_dir(out, ref.run_id)
    fs, path = _fs(target, storage_options)
    try:
        with fs.open(posixpath.join(path, "audit.json") if is_remote(target) else os.path.join(path, "audit.json"), "rb") as f:
            doc = json.load(f)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return bool(doc.get("run", {}).get("fingerprint") == ref.fingerprint)
