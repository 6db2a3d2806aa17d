"""The scenario suite: every rule fires on a real training that has its problem, and no rule
fires on the healthy controls. Prints the table of which rule fired on which scenario."""

from __future__ import annotations

import pytest

from trainaudit.tasks import AuditResult, catalog

from .trainings import CONTROLS, SCENARIOS

pytestmark = pytest.mark.timeout(900)

SEED_RULES = [
    "ClassImbalance", "DataNotNormalized", "TokenRatio", "LossNotDecreasing", "Overfit", "Underfit",
    "Overtraining", "Confusion", "PoorWeightInitialization", "WeightUpdateRatio", "VanishingGradient",
    "ExplodingTensor", "AllZero", "TensorVariance", "UnchangedTensor", "TanhSaturation",
    "SigmoidSaturation", "DeadRelu", "TreeDepth", "FeatureImportanceOverweight",
]


def test_the_catalog_holds_the_twenty_seed_rules() -> None:
    ids = {r["id"] for r in catalog()}
    assert set(SEED_RULES) <= ids


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_rule_fires_on_its_scenario(scenario_results: dict[str, AuditResult], scenario: object) -> None:
    res = scenario_results[scenario.name]  # type: ignore[attr-defined]
    for rule in scenario.fires:  # type: ignore[attr-defined]
        f = res.finding(rule)
        assert f.status == "triggered", f"{rule} did not fire on {scenario.name}: {f.status}: {f.message}"  # type: ignore[attr-defined]
        assert f.first_step is not None and f.message
        for expected in scenario.names.get(rule, ()):  # type: ignore[attr-defined]
            assert any(expected in t for t in f.tensors), f"{rule} on {scenario.name} names {f.tensors}, expected {expected!r}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("control", [c[0] for c in CONTROLS])
def test_no_rule_fires_on_a_healthy_control(scenario_results: dict[str, AuditResult], control: str) -> None:
    res = scenario_results[control]
    fired = [f"{f.rule}: {f.message}" for f in res.triggered]
    assert not fired, f"rules fired on the healthy control {control}: {fired}"
    assert not [f for f in res.findings if f.status == "error"], [f.message for f in res.findings if f.status == "error"]
