"""The audit end to end over synthetic runs written with the real Recorder, scanned on a real
distributed LocalCluster: scan == NumPy, read-once, corrupt chunks, NaN everywhere, empty runs,
invalid parameters, audit.json."""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _tasks_synth import write_mlp_run

from trainaudit.capture import CaptureConfig, InvalidParameterError, Recorder, open_run
from trainaudit.tasks import (
    AuditResult,
    Moments,
    Need,
    UnitBand,
    audit,
    evaluate,
    make_plan,
    merge_scans,
    register_rule,
    scan,
    unregister_rule,
)
from trainaudit.tasks._plan import RunOpener
from trainaudit.tasks.rules import BUILTIN_RULES


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture()
def mlp(local_dir: str) -> tuple[str, dict[str, list[np.ndarray]]]:
    uri = os.path.join(local_dir, "mlp")
    return uri, write_mlp_run(uri, steps=24, eval_every=8)


def _probe(ctx, *, x: int = 0):  # type: ignore[no-untyped-def]
    """Exposes its statistics. Defaults: none."""
    return ctx.ok("probe", evidence={"n": len(ctx.tensors("all"))})


@pytest.fixture()
def probe_rule() -> Iterator[str]:
    register_rule(_probe, id="ProbeMoments", needs=[
        Need(name="all", source="values", kernel=Moments()),
        Need(name="relu", collections=("outputs",), source="values", kernel=UnitBand(lo=0.0, hi=np.inf, axis=1)),
    ])
    yield "ProbeMoments"
    unregister_rule("ProbeMoments")


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_scan_matches_numpy(backend: str, local_dir: str, client: Any, probe_rule: str) -> None:
    uri = f"memory://scan-{uuid.uuid4().hex[:6]}" if backend == "memory" else os.path.join(local_dir, "r")
    written = write_mlp_run(uri, steps=12, eval_every=4)
    run = open_run(uri)
    plan = make_plan(run, [probe_rule, "DeadRelu", "ExplodingTensor"], block_bytes=4096)
    assert any(len(tp.blocks) > 1 for tp in plan.tensors.values())  # several blocks per tensor
    result = scan(plan, client=client)
    assert not result.errors
    for (_, name), states in result.states.items():
        if Moments() not in states:
            continue
        got = Moments().finalize(states[Moments()])
        allv = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in written[name]])
        assert got["count"] == allv.size, name
        assert got["mean"] == pytest.approx(allv.mean(), rel=1e-6, abs=1e-9), name
        assert got["var"] == pytest.approx(allv.var(), rel=1e-6, abs=1e-12), name
    band = UnitBand(lo=0.0, hi=np.inf, axis=1)
    res = band.finalize(result.states[(0, "outputs/relu0")][band])
    for (per_unit, counts), v in zip(res.records, written["outputs/relu0"], strict=True):
        np.testing.assert_array_equal(counts, (v > 0).sum(axis=0))
        assert per_unit == v.shape[0]
    # the stats capture wrote, read back
    st = result.stats[(0, "losses/loss")]
    np.testing.assert_allclose(np.sort(st.mean()), np.sort([float(v) for v in written["losses/loss"]]), rtol=1e-6)
    # serial scan, and two groups merged, give the same findings
    serial = scan(plan, client=None)
    keys = list(plan.tensors)
    merged = merge_scans([scan(plan, client=client, tensors=keys[::2]), scan(plan, client=client, tensors=keys[1::2])])
    for r in (serial, merged):
        assert [f.to_dict() for f in evaluate(plan, r)] == [f.to_dict() for f in evaluate(plan, result)]


class _CountingOpener:
    """Opens the run and counts the value rows read per tensor (serial scan only)."""

    def __init__(self, uri: str) -> None:
        self.inner = RunOpener(uri)
        self.rows: dict[str, int] = {}

    def __call__(self) -> Any:
        run = self.inner()
        outer = self

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                return getattr(run, name)

            def values_block(self, name: str, start: int, stop: int, rank: int = 0) -> Any:
                outer.rows[name] = outer.rows.get(name, 0) + (stop - start)
                return run.values_block(name, start, stop, rank=rank)

        return Wrapped()


def test_full_catalog_reads_each_value_row_once(mlp: tuple[str, Any]) -> None:
    uri, _ = mlp
    run = open_run(uri)
    opener = _CountingOpener(uri)
    plan = make_plan(run, None, opener=opener, block_bytes=2048)
    scan(plan, client=None)
    for info in run.tensors():
        assert opener.rows.get(info.name, 0) <= info.n_values, info.name
    # weights are read in full (TensorVariance, UnchangedTensor bands), exactly once
    assert opener.rows["weights/fc0.weight"] == run.tensor("weights/fc0.weight").n_values


def test_full_audit_of_a_healthy_run_writes_audit_json(mlp: tuple[str, Any], client: Any, local_dir: str) -> None:
    uri, _ = mlp
    out = os.path.join(local_dir, "out")
    res = audit(uri, client=client, out=out)
    assert [f.rule for f in res.findings] == [r["id"] for r in _catalog_order()]
    by = {f.rule: f for f in res.findings}
    assert not [f for f in res.findings if f.status == "error"], [f.message for f in res.findings if f.status == "error"]
    for rid in ("DeadRelu", "ExplodingTensor", "VanishingGradient", "AllZero", "ClassImbalance", "Confusion",
                "DataNotNormalized", "PoorWeightInitialization", "WeightUpdateRatio", "UnchangedTensor"):
        assert by[rid].status == "ok", (rid, by[rid].message)
    for rid in ("TreeDepth", "FeatureImportanceOverweight", "TokenRatio", "TanhSaturation"):
        assert by[rid].status == "not_evaluable"
        assert "turn on" in by[rid].message
    with open(os.path.join(out, "audit.json"), encoding="utf-8") as fh:
        text = fh.read()
    back = AuditResult.from_json(text)
    assert [f.to_dict() for f in back.findings] == [f.to_dict() for f in res.findings]
    d = json.loads(text)
    assert d["series"]["loss"]["kind"] == "line" and len(d["series"]["loss"]["series"]) == 2
    assert d["series"]["gradient_norms"]["kind"] == "heatmap"
    assert d["coverage"]["collections"]["weights"] == 3
    assert "trees" in d["coverage"]["missing_collections"]
    assert d["coverage"]["steps"]["train"] == 24


def _catalog_order() -> list[dict[str, Any]]:
    from trainaudit.tasks import registry

    return [{"id": k} for k in registry()]


def test_triggered_rules_on_a_broken_run(local_dir: str, client: Any) -> None:
    uri = os.path.join(local_dir, "broken")
    write_mlp_run(uri, steps=12, eval_every=0, dead_layer=1, frozen_layer=0)
    res = audit(uri, client=client, rules=["DeadRelu", "WeightUpdateRatio", "UnchangedTensor", "AllZero"])
    by = {f.rule: f for f in res.findings}
    assert by["DeadRelu"].status == "triggered" and by["DeadRelu"].tensors == ["relu1", "relu2"]  # relu2 gets zeros
    assert by["DeadRelu"].first_step is not None and by["DeadRelu"].first_step.step == 0
    assert by["WeightUpdateRatio"].status == "triggered" and by["WeightUpdateRatio"].tensors[0] == "fc0"
    assert by["UnchangedTensor"].status == "triggered" and by["UnchangedTensor"].tensors == ["weights/fc0.weight"]
    assert by["AllZero"].status == "triggered" and "outputs/relu1" in by["AllZero"].tensors


def test_corrupt_chunk_errors_only_the_rules_that_need_it(mlp: tuple[str, Any], client: Any) -> None:
    uri, _ = mlp
    run = open_run(uri)
    info = run.tensor("outputs/relu1")
    files = sorted(f for f in glob.glob(os.path.join(uri, "rank_0", info.key, "values", "c", "**"), recursive=True)
                   if os.path.isfile(f))
    assert files
    with open(files[0], "wb") as fh:
        fh.write(b"garbage, not a zarr chunk" * 10)
    res = audit(uri, client=client)
    by = {f.rule: f for f in res.findings}
    # the rules that read full values of module outputs by default: DeadRelu and TensorVariance
    for rule_id in ("DeadRelu", "TensorVariance"):
        f = by[rule_id]
        assert f.status == "error", f.message
        assert "outputs/relu1" in f.message and "step" in f.message
    others = [x for x in res.findings if x.rule not in ("DeadRelu", "TensorVariance")]
    assert all(x.status != "error" for x in others), [(x.rule, x.message) for x in others if x.status == "error"]
    assert by["LossNotDecreasing"].status in ("ok", "triggered")
    assert res.coverage["scan_errors"][0]["tensor"] == "outputs/relu1"


def test_nan_everywhere(local_dir: str, client: Any) -> None:
    uri = os.path.join(local_dir, "nan")
    with Recorder(uri, config=CaptureConfig.full()) as r:
        for s in range(15):
            meta = {"module": "fc0", "depth": 0, "param": "weight"}
            r.record("weights/fc0.weight", np.full((4, 4), np.nan, np.float32), collection="weights", step=s, meta=meta)
            r.record("gradients/fc0.weight", np.full((4, 4), np.nan, np.float32), collection="gradients", step=s,
                     meta=meta)
            r.record("outputs/relu0", np.full((8, 4), np.nan, np.float32), collection="outputs", step=s,
                     meta={"module": "relu0", "activation": "relu", "depth": 1})
            r.record("losses/loss", np.float32(np.nan), collection="losses", step=s)
            r.record("inputs/x", np.full((8, 4), np.nan, np.float32), collection="inputs", step=s)
            r.record("labels/y", np.zeros(8, np.int64), collection="labels", step=s)
    res = audit(uri, client=client)
    by = {f.rule: f for f in res.findings}
    f = by["ExplodingTensor"]
    assert f.status == "triggered" and f.first_step is not None and f.first_step.step == 0
    assert f.evidence["inputs_finite"] is False
    assert f.tensors[0] == "outputs/relu0"  # forward before backward: the output went NaN first
    errors = [(x.rule, x.message) for x in res.findings if x.status == "error"]
    assert not errors, errors
    json.loads(res.to_json())


def test_empty_run_every_rule_not_evaluable(local_dir: str, client: Any) -> None:
    uri = os.path.join(local_dir, "empty")
    Recorder(uri).close()
    res = audit(uri, client=client)
    assert len(res.findings) == len(BUILTIN_RULES)
    assert {f.status for f in res.findings} == {"not_evaluable"}, [(f.rule, f.status, f.message) for f in res.findings]


def test_just_started_run(local_dir: str, client: Any) -> None:
    uri = os.path.join(local_dir, "started")
    rec = Recorder(uri)
    rec.flush()
    try:
        res = audit(uri, client=client)
        assert {f.status for f in res.findings} == {"not_evaluable"}
    finally:
        rec.close()


def test_invalid_params_fail_before_reading(mlp: tuple[str, Any]) -> None:
    uri, _ = mlp
    with pytest.raises(InvalidParameterError, match=r"threshold_layer=-1.0 is out of range: expected >= 0"):
        audit(uri, params={"DeadRelu": {"threshold_layer": -1}}, client="tcp://127.0.0.1:1")  # never connects


def test_a_failing_rule_is_an_error_and_the_others_go_on(mlp: tuple[str, Any], client: Any) -> None:
    def broken(ctx, *, k: int = 1):  # type: ignore[no-untyped-def]
        """Raises. Defaults: none."""
        return 1 / 0

    register_rule(broken, id="BrokenRule", needs=[Need(name="l", collections=("losses",))])
    try:
        uri, _ = mlp
        res = audit(uri, client=client, rules=["BrokenRule", "AllZero"], params={"AllZero": {"threshold": 99}})
        by = {f.rule: f for f in res.findings}
        assert by["BrokenRule"].status == "error" and "ZeroDivisionError" in by["BrokenRule"].message
        assert "test_tasks_audit.py" in by["BrokenRule"].message
        assert by["AllZero"].status == "ok" and by["AllZero"].params["threshold"] == 99.0
    finally:
        unregister_rule("BrokenRule")


def test_audit_on_s3(s3_bucket: str, client: Any) -> None:
    uri = f"{s3_bucket}/runs/mlp"
    write_mlp_run(uri, steps=10, eval_every=5)
    res = audit(uri, client=client, rules=["DeadRelu", "LossNotDecreasing", "ExplodingTensor"])
    assert [f.status for f in res.findings] == ["ok", "not_evaluable", "ok"] or all(
        f.status != "error" for f in res.findings), [(f.rule, f.message) for f in res.findings]
    assert res.finding("DeadRelu").status == "ok"


def test_temporary_local_cluster(mlp: tuple[str, Any]) -> None:
    uri, _ = mlp
    res = audit(uri, rules=["AllZero", "DeadRelu"])
    assert [f.status for f in res.findings] == ["ok", "ok"]
    assert res.timings["scan"] > 0


def test_prefect_wrappers_run_the_same_code(mlp: tuple[str, Any], client: Any) -> None:
    from trainaudit.tasks._prefect import evaluate_task, plan_task, scan_task

    uri, _ = mlp
    plan = plan_task.fn(uri, rules=["DeadRelu", "AllZero", "Confusion"])
    keys = list(plan.tensors)
    scans = [scan_task.fn(plan, tensors=keys[:3], client=client), scan_task.fn(plan, tensors=keys[3:], client=client)]
    res = evaluate_task.fn(plan, scans)
    direct = audit(uri, client=client, rules=["DeadRelu", "AllZero", "Confusion"])
    assert [f.to_dict() for f in res.findings] == [f.to_dict() for f in direct.findings]
    assert res.series.keys() == direct.series.keys()


def test_existing_cluster_by_address(mlp: tuple[str, Any], client: Any) -> None:
    uri, _ = mlp
    res = audit(uri, address=client.scheduler.address, rules=["DeadRelu"])
    assert res.finding("DeadRelu").status == "ok"


def test_blocks_bound_the_memory_of_a_task(mlp: tuple[str, Any]) -> None:
    """A task holds at most ~block_bytes of values (or one chunk, when a chunk is larger), and
    the blocks of a tensor are disjoint and cover the rows its kernels want."""
    uri, _ = mlp
    run = open_run(uri)
    for block_bytes in (1 << 12, 1 << 16, 1 << 26):
        plan = make_plan(run, None, block_bytes=block_bytes)
        for tp in plan.tensors.values():
            t = tp.tensor
            row = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
            for lo, hi in tp.blocks:
                assert (hi - lo) * row <= max(block_bytes, row * max(1, t.chunk_steps)), (t.name, lo, hi)
            covered = [i for lo, hi in tp.blocks for i in range(lo, hi)]
            assert len(covered) == len(set(covered))
            for klo, khi in tp.kernels.values():
                assert set(range(klo, khi)) <= set(covered)
