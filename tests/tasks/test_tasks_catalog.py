"""The catalog: listing, custom rules, duplicates, entry points, parameter validation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainaudit.capture import DuplicateRuleError, InvalidParameterError, UnknownRuleError
from trainaudit.tasks import (
    Need,
    catalog,
    format_catalog,
    get_rule,
    register_rule,
    registry,
    unregister_rule,
)
from trainaudit.tasks._catalog import ENTRY_POINT_GROUP, load_entry_points, resolve_params
from trainaudit.tasks.rules import BUILTIN_RULES


def test_catalog_lists_the_twenty_rules_of_rules_md() -> None:
    ids = [d["id"] for d in catalog()]
    assert sorted(ids) == sorted(BUILTIN_RULES) and len(ids) == 20
    dead = next(d for d in catalog() if d["id"] == "DeadRelu")
    assert dead["problem_class"] == "activations" and dead["severity"] == "warning"
    assert dead["parameters"]["threshold_layer"]["default"] == 50.0
    assert dead["parameters"]["threshold_layer"]["range"] == ">= 0 and <= 100"
    assert dead["fix"] and dead["problem"] and dead["condition"]
    assert "DeadRelu" in format_catalog()


@pytest.mark.parametrize("rule_id", BUILTIN_RULES)
def test_every_rule_documents_condition_defaults_and_fix(rule_id: str) -> None:
    spec = get_rule(rule_id)
    doc = spec.fn.__doc__ or ""
    assert "Default" in doc or "default" in doc, f"{rule_id}: docstring must say where the defaults came from"
    assert spec.fix and spec.problem
    for name, p in spec.parameters.items():
        assert p.kind is p.KEYWORD_ONLY, name


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        registry()["X"] = None  # type: ignore[index]


def test_unknown_rule() -> None:
    with pytest.raises(UnknownRuleError, match="Nope"):
        get_rule("Nope")


def _custom(ctx, *, limit: float = 1.0):  # type: ignore[no-untyped-def]
    """Fires when the loss tensor exists. Defaults: ours."""
    ts = ctx.with_stats("loss")
    if not ts:
        return ctx.missing("loss")
    return ctx.triggered("saw a loss", tensors=[t.name for t in ts])


def test_register_custom_rule_and_duplicate_names_both_places() -> None:
    spec = register_rule(_custom, id="MyCustomRule", needs=[Need(name="loss", collections=("losses",))])
    try:
        assert "MyCustomRule" in registry()
        assert any(d["id"] == "MyCustomRule" for d in catalog())

        def other(ctx, *, x: int = 1):  # type: ignore[no-untyped-def]
            return ctx.ok("")

        with pytest.raises(DuplicateRuleError) as e:
            register_rule(other, id="MyCustomRule")
        msg = str(e.value)
        assert "_custom" in msg and "other" in msg and "MyCustomRule" in msg
        with pytest.raises(DuplicateRuleError, match="DeadRelu"):
            register_rule(other, id="DeadRelu")
        assert spec.source in msg
    finally:
        unregister_rule("MyCustomRule")


def test_rule_parameters_must_be_keyword_only() -> None:
    def bad(ctx, threshold=1.0):  # type: ignore[no-untyped-def]
        return ctx.ok("")

    with pytest.raises(TypeError, match="keyword-only"):
        register_rule(bad, id="BadSignature")


def test_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    ep = md.EntryPoint(name="custom", value="_tasks_helpers:register_entry_point_rule", group=ENTRY_POINT_GROUP)

    def fake(group: str | None = None, **kw):  # type: ignore[no-untyped-def]
        return [ep] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(md, "entry_points", fake)
    try:
        assert load_entry_points() == ["EntryPointRule"]
        assert "EntryPointRule" in registry()
    finally:
        unregister_rule("EntryPointRule")




INVALID = [
    ("DeadRelu", {"threshold_layer": -1}, "threshold_layer=-1.0 is out of range: expected >= 0 and <= 100"),
    ("DeadRelu", {"threshold_layer": "high"}, "threshold_layer='high' has the wrong type"),
    ("DeadRelu", {"treshold_layer": 5}, "unknown parameter 'treshold_layer'"),
    ("LossNotDecreasing", {"num_steps": 0}, "num_steps=0 is out of range: expected >= 1"),
    ("LossNotDecreasing", {"num_steps": 2.5}, "num_steps=2.5 has the wrong type: expected an integer"),
    ("TensorVariance", {"min_threshold": -1}, "min_threshold=-1.0 is out of range: expected >= 0"),
    ("ExplodingTensor", {"only_nan": "False"}, "only_nan='False' has the wrong type: expected true or false"),
    ("TokenRatio", {"token_values": [0, 1]}, "must have the same length"),
    ("FeatureImportanceOverweight", {"importance_type": "split"}, "importance_type='split' is not allowed"),
    ("SigmoidSaturation", {"x_min": 5, "x_max": 1}, "x_min=5.0 must be < x_max=1.0"),
    ("WeightUpdateRatio", {"small_threshold": 20}, "small_threshold=20.0 must be < large_threshold"),
    ("Overfit", {"ratio_threshold": float("nan")}, "ratio_threshold=nan is out of range"),
]


@pytest.mark.parametrize(("rule_id", "params", "text"), INVALID, ids=[f"{r}-{next(iter(p))}" for r, p, _ in INVALID])
def test_invalid_parameters_name_the_parameter_and_range(rule_id: str, params: dict, text: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidParameterError) as e:
        resolve_params(get_rule(rule_id), params)
    assert text in str(e.value)
    assert rule_id in str(e.value)


def test_valid_overrides_are_coerced() -> None:
    p = resolve_params(get_rule("DeadRelu"), {"threshold_layer": 30})
    assert p["threshold_layer"] == 30.0 and isinstance(p["threshold_layer"], float)
    p = resolve_params(get_rule("AllZero"), {"collections": ("gradients",)})
    assert p["collections"] == ["gradients"]
    assert resolve_params(get_rule("TensorVariance"), {"max_threshold": None})["max_threshold"] is None


def test_import_is_light() -> None:
    code = ("import sys, trainaudit.tasks as t; t.catalog(); "
            "bad = [m for m in ('prefect', 'dask', 'distributed', 'trainaudit.reports') if m in sys.modules]; "
            "assert not bad, bad; assert sorted(t.__all__) == sorted(set(t.__all__))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_rules_md_is_generated_from_the_catalog() -> None:
    import pathlib

    from trainaudit.tasks._catalog import catalog_markdown

    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "RULES.md"
    assert path.read_text(encoding="utf-8") == catalog_markdown(), (
        "docs/RULES.md is stale: run `python -m trainaudit.tasks._catalog > docs/RULES.md`")
