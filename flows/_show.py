"""``trainaudit show URI``: what a run holds, for people and scripts."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainaudit.capture import MODES, open_run

__all__ = ["describe_run", "format_description"]


def describe_run(uri: str) -> dict[str, Any]:
    """Ranks, modes, steps, collections, status and capture errors of the run at ``uri``."""
    run = open_run(uri)
    ranks = {}
    for r in run.ranks:
        st = run.steps(r)
        per_mode = {}
        for code, mode in enumerate(MODES):
            sel = st.mode == code
            if sel.any():
                gs = st.global_step[sel]
                per_mode[mode] = {"steps": int(sel.sum()), "first": int(gs.min()), "last": int(gs.max())}
        ranks[str(r)] = {
            "committed_steps": run.committed_steps(r),
            "modes": per_mode,
            "last_write": float(np.max(st.time)) if len(st) else None,
        }
    tensors: dict[str, list[dict[str, Any]]] = {}
    for r in run.ranks[:1]:
        for t in run.tensors(rank=r):
            tensors.setdefault(t.collection, []).append(
                {"name": t.name, "shape": t.shape, "dtype": t.dtype, "stats_steps": t.n_stats, "value_steps": t.n_values}
            )
    return {
        "uri": run.uri,
        "run_id": run.run_id,
        "framework": run.framework,
        "created": run.created,
        "status": run.status,
        "format_version": run.format_version,
        "ranks": ranks,
        "collections": {c: len(v) for c, v in sorted(tensors.items())},
        "tensors": tensors,
        "capture_errors": run.errors,
        "lost": run.lost,
    }


def format_description(d: dict[str, Any]) -> str:
    lines = [
        f"run        {d['run_id']}  ({d['uri']})",
        f"framework  {d['framework']}   status: {d['status']}   format v{d['format_version']}   created {d['created']}",
    ]
    for r, info in d["ranks"].items():
        modes = ", ".join(f"{m} {v['steps']} steps ({v['first']}-{v['last']})" for m, v in info["modes"].items()) or "no steps"
        lines.append(f"rank {r:<5} {info['committed_steps']} committed steps: {modes}")
    lines.append("collections:")
    for c, items in d["tensors"].items():
        sample = ", ".join(t["name"].split("/", 1)[-1] for t in items[:6]) + (" ..." if len(items) > 6 else "")
        with_values = sum(1 for t in items if t["value_steps"])
        lines.append(f"  {c:<18} {len(items):>4} tensors ({with_values} with full values)  {sample}")
    if d["capture_errors"]:
        lines.append(f"capture errors: {len(d['capture_errors'])}")
        for e in d["capture_errors"][:10]:
            lines.append(f"  [{e.get('kind')}] {e.get('message')}")
    else:
        lines.append("capture errors: none")
    if d["lost"]:
        lines.append(f"lost or dropped steps: {d['lost']}")
    return "\n".join(lines)
