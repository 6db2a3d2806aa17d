"""The builtin rule catalog (RULES.md): importing this package registers the twenty rules.

One module per problem class: datasets, loss, weights, gradients, tensors, activations, trees.
Each rule is a plain function of finalized statistics that returns a finding.
"""

from __future__ import annotations

from . import _activations, _datasets, _gradients, _loss, _tensors, _trees, _weights

__all__ = ["BUILTIN_RULES"]

BUILTIN_RULES: tuple[str, ...] = (
    "ClassImbalance",
    "DataNotNormalized",
    "TokenRatio",
    "LossNotDecreasing",
    "Overfit",
    "Underfit",
    "Overtraining",
    "Confusion",
    "PoorWeightInitialization",
    "WeightUpdateRatio",
    "VanishingGradient",
    "ExplodingTensor",
    "AllZero",
    "TensorVariance",
    "UnchangedTensor",
    "TanhSaturation",
    "SigmoidSaturation",
    "DeadRelu",
    "TreeDepth",
    "FeatureImportanceOverweight",
)

del _activations, _datasets, _gradients, _loss, _tensors, _trees, _weights
