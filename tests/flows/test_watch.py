"""The watch flow on a real training in another process: it audits while the job trains and
stops it through the stop request the hook polls."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainaudit.capture import open_run
from trainaudit.flows._watch import stalled_training

TRAINER = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from torch import nn
    from trainaudit.capture import CaptureConfig, TorchHook

    uri, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    nn.init.constant_(model[2].bias, -20.0)   # the second hidden layer is dead: DeadRelu fires
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(512, 16), torch.randint(0, 3, (512,))
    hook = TorchHook(uri, config=CaptureConfig(flush_seconds=0.5)).register(model, opt, loss_fn)
    step, t0 = 0, time.time()
    while time.time() - t0 < 120:
        if mode == "stall" and step >= 20:
            time.sleep(0.2)            # stuck: no more steps, the hook stays open
        else:
            i = (step * 32) % 480
            opt.zero_grad(); loss_fn(model(x[i:i+32]), y[i:i+32]).backward(); opt.step()
            step += 1
            time.sleep(0.02)
        if hook.stop_requested:
            break
    json.dump({"steps": step, "stopped": hook.stop_requested, "reason": hook.stop_reason}, open(out, "w"))
    hook.close()
    """
)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    uri, out = str(tmp_path / f"run-{mode}"), tmp_path / f"result-{mode}.json"
    proc = subprocess.Popen([sys.executable, str(script), uri, str(out), mode])
    for _ in range(300):  # wait for the first committed steps
        try:
            if open_run(uri).committed_steps() > 0:
                break
        except Exception:
            pass
        time.sleep(0.1)
    return proc, uri, out


def test_watch_stops_a_training_when_a_rule_fires(prefect_harness: None, tmp_path: Path) -> None:
    from trainaudit.flows import watch_run

    proc, uri, out = _start(tmp_path, "train")
    try:
        summary = watch_run(uri, interval=1.0, stall_seconds=60.0, stop_on=["DeadRelu"], rules=["DeadRelu", "LossNotDecreasing"],
                            out=str(tmp_path / "audit"), max_passes=40)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    result = json.loads(out.read_text())
    assert summary["stop_requested"] and "DeadRelu" in summary["fired"]
    assert result["stopped"] and "DeadRelu" in result["reason"]
    assert summary["audits"] >= 1 and (tmp_path / "audit" / "report.html").is_file()
    assert open_run(uri).status == "complete"  # the job closed its hook cleanly after stopping


def test_watch_flags_a_stalled_training(prefect_harness: None, tmp_path: Path) -> None:
    from trainaudit.flows import watch_run

    proc, uri, out = _start(tmp_path, "stall")
    try:
        summary = watch_run(uri, interval=1.0, stall_seconds=3.0, stop_on=["StalledTraining"], rules=["LossNotDecreasing"],
                            max_passes=30)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert summary["stalled"] and summary["stop_requested"]
    assert json.loads(out.read_text())["steps"] == 20


@pytest.mark.parametrize(
    ("last", "status"), [(None, "not_evaluable"), (95.0, "ok"), (50.0, "triggered")]
)
def test_stalled_training_rule(last: float | None, status: str) -> None:
    f = stalled_training(last_commit=last, now=100.0, threshold=30.0, last_step=7)
    assert f.status == status and f.rule == "StalledTraining"
    if status == "triggered":
        assert f.first_step is not None and f.first_step.step == 7 and "50 s" in f.message
