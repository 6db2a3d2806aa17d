"""The scenario suite's trainings: small, real PyTorch and XGBoost trainings, each with one
known problem (or none, for the healthy controls), captured with trainaudit's own hooks.

Every function takes a run URI and trains for a few seconds on one CPU thread. The
``SCENARIOS`` table says which rule must fire on which training (and, where the scenario
makes it clear, which layers or features it must name); ``CONTROLS`` lists the healthy
trainings on which no rule may fire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainaudit.capture import CaptureConfig, TorchHook

__all__ = ["Scenario", "SCENARIOS", "CONTROLS"]


# ---------------------------------------------------------------------------------------------
# Data


def blobs(n: int = 4096, dim: int = 32, classes: int = 4, seed: int = 0, *, weights: list[float] | None = None,
          scale: float = 1.0, shift: float = 0.0, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: separable, normalised classification data (unless told otherwise)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(classes, dim))
    p = np.asarray(weights, dtype=float) / np.sum(weights) if weights else None
    y = rng.choice(classes, size=n, p=p)
    x = centers[y] + rng.normal(0, 1.0, size=(n, dim))
    if normalize:
        x = (x - x.mean(0)) / x.std(0)
    x = x * scale + shift
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def mlp(dims: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def train_classifier(uri: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 200,
                     lr: float = 1e-3, opt: str = "adam", batch: int = 64, eval_every: int = 25,
                     x_eval: torch.Tensor | None = None, y_eval: torch.Tensor | None = None,
                     config: CaptureConfig | None = None, seed: int = 0, run_id: str | None = None) -> None:
    """The shared loop: minibatch training with periodic evaluation, captured by TorchHook."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr) if opt == "adam" else torch.optim.SGD(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    if x_eval is None:
        x_eval, y_eval = x[-512:], y[-512:]
    assert y_eval is not None
    with TorchHook(uri, config=config, run_id=run_id).register(model, optimizer, loss_fn):
        for step in range(steps):
            i = (step * batch) % max(1, n - batch + 1)
            optimizer.zero_grad()
            loss_fn(model(x[i : i + batch]), y[i : i + batch]).backward()
            optimizer.step()
            if eval_every and step % eval_every == eval_every - 1:
                model.eval()
                with torch.no_grad():
                    for j in range(0, len(x_eval), 256):
                        loss_fn(model(x_eval[j : j + 256]), y_eval[j : j + 256])
                model.train()


# ---------------------------------------------------------------------------------------------
# Healthy controls


def healthy_relu_mlp(uri: str) -> None:
    x, y = blobs()
    train_classifier(uri, mlp([32, 64, 64, 4]), x[:3584], y[:3584], x_eval=x[3584:], y_eval=y[3584:])


def healthy_tanh_mlp(uri: str) -> None:
    x, y = blobs(seed=1)
    train_classifier(uri, mlp([32, 64, 64, 4], nn.Tanh), x[:3584], y[:3584], x_eval=x[3584:], y_eval=y[3584:])


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 images whose class is the quadrant holding a bright square, normalised."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = rng.normal(0, 0.3, size=(n, 1, 28, 28))
    for i, c in enumerate(y):
        r0, c0 = (c // 2) * 14 + 3, (c % 2) * 14 + 3
        x[i, 0, r0 : r0 + 8, c0 : c0 + 8] += 2.0
    x = (x - x.mean()) / x.std()
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def healthy_cnn(uri: str) -> None:
    x, y = _images(2048)
    train_classifier(uri, SmallCNN(), x[:1792], y[:1792], x_eval=x[1792:], y_eval=y[1792:], steps=120)


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 200, dim: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).float().unsqueeze(-1)
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def _texts(n: int, *, pad_share: float, seq: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences whose class picks the token range; the tail of each is padding (0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    tokens = np.zeros((n, seq), dtype=np.int64)
    for i, c in enumerate(y):
        length = max(1, int(round(seq * (1 - pad_share) * rng.uniform(0.8, 1.2))))
        length = min(seq, length)
        tokens[i, :length] = rng.integers(1 + 60 * c, 61 + 60 * c, size=length)
    return torch.from_numpy(tokens), torch.from_numpy(y.astype(np.int64))


def healthy_text(uri: str) -> None:
    x, y = _texts(3072, pad_share=0.3)
    train_classifier(uri, TextClassifier(), x[:2560], y[:2560], x_eval=x[2560:], y_eval=y[2560:], lr=3e-3)


def _xgb_data(n: int, features: int, seed: int, *, informative: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = np.zeros(features)
    w[:informative] = rng.uniform(0.5, 1.5, size=informative)
    return x, x @ w


def healthy_xgb_classifier(uri: str) -> None:
    import xgboost as xgb

    from trainaudit.capture import XGBoostCallback

    # 2 % of the labels flipped by noise (a Bayes-optimal classifier is ~98.6 % precise) and
    # XGBoost's default eta=0.3: the model ends ~94 % precise on the validation set. (With 5.6 %
    # flipped labels and eta=0.1 the best possible precision was 94 % and the 60-round model
    # reached 90 %: a noisy, unfinished classifier, not a clearly healthy one.)
    x, z = _xgb_data(3000, 10, 0)
    rng = np.random.default_rng(1)
    y = (z + rng.normal(0, 0.2, len(z)) > 0).astype(np.float32)
    dtrain, dval = xgb.DMatrix(x[:2400], label=y[:2400]), xgb.DMatrix(x[2400:], label=y[2400:])
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "nthread": 1, "eval_metric": "logloss"}
    xgb.train(params, dtrain, 60, evals=[(dtrain, "train"), (dval, "validation")], verbose_eval=False,
              callbacks=[XGBoostCallback(uri, eval_data={"validation": dval})])


def healthy_xgb_regressor(uri: str) -> None:
    import xgboost as xgb

    from trainaudit.capture import XGBoostCallback

    x, z = _xgb_data(3000, 10, 2)
    rng = np.random.default_rng(3)
    y = z + rng.normal(0, 0.3, len(z))
    dtrain, dval = xgb.DMatrix(x[:2400], label=y[:2400]), xgb.DMatrix(x[2400:], label=y[2400:])
    params = {"objective": "reg:squarederror", "max_depth": 4, "eta": 0.1, "nthread": 1}
    xgb.train(params, dtrain, 60, evals=[(dtrain, "train"), (dval, "validation")], verbose_eval=False,
              callbacks=[XGBoostCallback(uri, eval_data={"validation": dval})])


# ---------------------------------------------------------------------------------------------
# Faulty trainings, one problem each


def class_imbalance(uri: str) -> None:
    x, y = blobs(weights=[0.90, 0.06, 0.03, 0.01], seed=4)
    train_classifier(uri, mlp([32, 64, 4]), x[:3584], y[:3584], x_eval=x[3584:], y_eval=y[3584:], steps=120)


def data_not_normalized(uri: str) -> None:
    x, y = blobs(seed=5, normalize=False, scale=30.0, shift=50.0)
    train_classifier(uri, mlp([32, 64, 4]), x[:3584], y[:3584], x_eval=x[3584:], y_eval=y[3584:], steps=60, lr=1e-4)


def token_ratio(uri: str) -> None:
    x, y = _texts(2048, pad_share=0.85, seed=6)
    train_classifier(uri, TextClassifier(), x[:1536], y[:1536], x_eval=x[1536:], y_eval=y[1536:], steps=60, lr=3e-3)


def loss_not_decreasing(uri: str) -> None:
    x, y = blobs(seed=7)
    train_classifier(uri, mlp([32, 64, 4]), x, y, steps=120, lr=1e-7, opt="sgd")


def overfit(uri: str) -> None:
    # 64 training samples, a big network, noisy labels: memorised, and the eval loss climbs.
    x, y = blobs(n=2048, seed=8, scale=1.0)
    rng = np.random.default_rng(8)
    y_noisy = y.clone()
    flip = torch.from_numpy(rng.random(len(y)) < 0.3)
    y_noisy[flip] = torch.from_numpy(rng.integers(0, 4, size=int(flip.sum())))
    train_classifier(uri, mlp([32, 256, 256, 4]), x[:64], y_noisy[:64], x_eval=x[1024:], y_eval=y[1024:],
                     steps=400, lr=3e-3, batch=64, eval_every=10)


def underfit(uri: str) -> None:
    # A linear model cannot separate concentric classes (a radial boundary): the loss stays
    # near its initial value and accuracy near chance.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4096, 16)).astype(np.float32)
    r = np.linalg.norm(x, axis=1)
    y = (r > np.median(r)).astype(np.int64)
    train_classifier(uri, nn.Sequential(nn.Linear(16, 2)), torch.from_numpy(x), torch.from_numpy(y), steps=200, lr=1e-3)


def confusion(uri: str) -> None:
    # Classes 2 and 3 are drawn from the same distribution (one shared blob centre): no model can
    # tell them apart, so about half of its predictions of either are the other.
    rng = np.random.default_rng(10)
    centers = rng.normal(0, 2.0, size=(4, 32))
    centers[3] = centers[2]
    y = rng.integers(0, 4, size=4096)
    x = centers[y] + rng.normal(0, 1.0, size=(4096, 32))
    x = (x - x.mean(0)) / x.std(0)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    train_classifier(uri, mlp([32, 64, 4]), xt[:3584], yt[:3584], x_eval=xt[3584:], y_eval=yt[3584:], steps=200)


def poor_weight_init(uri: str) -> None:
    model = mlp([32, 64, 64, 4])
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.05)
            nn.init.zeros_(m.bias)
    x, y = blobs(seed=11)
    train_classifier(uri, model, x, y, steps=60, lr=1e-3)


def tiny_updates(uri: str) -> None:
    x, y = blobs(seed=12)
    train_classifier(uri, mlp([32, 64, 4]), x, y, steps=60, lr=1e-12, opt="sgd")


def vanishing_gradient(uri: str) -> None:
    # Twelve sigmoid layers with small weights: the gradient shrinks ~16x per layer.
    model = mlp([32] + [64] * 12 + [4], nn.Sigmoid)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.05)
            nn.init.zeros_(m.bias)
    x, y = blobs(seed=13)
    train_classifier(uri, model, x, y, steps=60, lr=1e-2, opt="sgd")


def exploding(uri: str) -> None:
    # A learning rate of 50 on unnormalised inputs: the loss overflows to NaN within steps.
    x, y = blobs(seed=14, normalize=False, scale=10.0)
    train_classifier(uri, mlp([32, 64, 64, 4]), x, y, steps=40, lr=50.0, opt="sgd", eval_every=0)


def all_zero(uri: str) -> None:
    # The middle layer's weights and bias are zero and frozen: its outputs are all zero.
    model = mlp([32, 64, 64, 4])
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    model[2].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    x, y = blobs(seed=15)
    train_classifier(uri, model, x, y, steps=60)


def frozen_layer(uri: str) -> None:
    # The first layer is frozen by mistake: its weights never change.
    model = mlp([32, 64, 64, 4])
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    x, y = blobs(seed=16)
    train_classifier(uri, model, x, y, steps=120)


def tanh_saturation(uri: str) -> None:
    # Raw, unnormalised features around 1000 (sensor readings, say) straight into a tanh network
    # with the default initialisation: the first layer's pre-activations sit in the hundreds,
    # where tanh' < 1e-7, for almost every unit; the loss stays at chance.
    x, y = blobs(seed=17, normalize=False, shift=1000.0)
    train_classifier(uri, mlp([32, 64, 64, 4], nn.Tanh), x, y, steps=60)


def sigmoid_saturation(uri: str) -> None:
    # The same mistake with sigmoids: pre-activations in the hundreds, far outside (-23, 17).
    x, y = blobs(seed=18, normalize=False, shift=1000.0)
    train_classifier(uri, mlp([32, 64, 64, 4], nn.Sigmoid), x, y, steps=60)


def dead_relu(uri: str) -> None:
    model = mlp([32, 64, 64, 4])
    nn.init.constant_(model[2].bias, -20.0)  # the second hidden layer's units never activate
    x, y = blobs(seed=19)
    train_classifier(uri, model, x, y, steps=100, lr=1e-3)


def deep_trees(uri: str) -> None:
    import xgboost as xgb

    from trainaudit.capture import XGBoostCallback

    rng = np.random.default_rng(20)
    x = rng.normal(size=(4000, 12)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(0, 1.0, 4000) > 0).astype(np.float32)
    dtrain, dval = xgb.DMatrix(x[:3000], label=y[:3000]), xgb.DMatrix(x[3000:], label=y[3000:])
    params = {"objective": "binary:logistic", "max_depth": 14, "eta": 0.3, "nthread": 1, "eval_metric": "logloss"}
    xgb.train(params, dtrain, 30, evals=[(dtrain, "train"), (dval, "validation")], verbose_eval=False,
              callbacks=[XGBoostCallback(uri, eval_data={"validation": dval})])


def one_feature(uri: str) -> None:
    import xgboost as xgb

    from trainaudit.capture import XGBoostCallback

    rng = np.random.default_rng(21)
    x = rng.normal(size=(3000, 20)).astype(np.float32)
    y = (x[:, 7] > 0).astype(np.float32)
    dtrain, dval = xgb.DMatrix(x[:2400], label=y[:2400]), xgb.DMatrix(x[2400:], label=y[2400:])
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1, "eval_metric": "logloss"}
    xgb.train(params, dtrain, 30, evals=[(dtrain, "train"), (dval, "validation")], verbose_eval=False,
              callbacks=[XGBoostCallback(uri, eval_data={"validation": dval})])


@dataclass(frozen=True)
class Scenario:
    name: str
    train: Callable[[str], None]
    fires: tuple[str, ...]
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rule -> tensors it must name


SCENARIOS: list[Scenario] = [
    Scenario("class_imbalance", class_imbalance, ("ClassImbalance",)),
    Scenario("data_not_normalized", data_not_normalized, ("DataNotNormalized",)),
    Scenario("token_ratio", token_ratio, ("TokenRatio",)),
    Scenario("loss_not_decreasing", loss_not_decreasing, ("LossNotDecreasing",)),
    Scenario("overfit", overfit, ("Overfit", "Overtraining")),
    Scenario("underfit", underfit, ("Underfit",)),
    Scenario("confusion", confusion, ("Confusion",)),
    Scenario("poor_weight_init", poor_weight_init, ("PoorWeightInitialization",)),
    Scenario("tiny_updates", tiny_updates, ("WeightUpdateRatio",)),
    Scenario("vanishing_gradient", vanishing_gradient, ("VanishingGradient",)),
    Scenario("exploding", exploding, ("ExplodingTensor",)),
    Scenario("all_zero", all_zero, ("AllZero",), {"AllZero": ("2",)}),
    Scenario("constant_weights", poor_weight_init, ("TensorVariance",)),
    Scenario("frozen_layer", frozen_layer, ("UnchangedTensor",), {"UnchangedTensor": ("0.weight",)}),
    Scenario("tanh_saturation", tanh_saturation, ("TanhSaturation",)),
    Scenario("sigmoid_saturation", sigmoid_saturation, ("SigmoidSaturation",)),
    Scenario("dead_relu", dead_relu, ("DeadRelu",), {"DeadRelu": ("3",)}),
    Scenario("deep_trees", deep_trees, ("TreeDepth",)),
    Scenario("one_feature", one_feature, ("FeatureImportanceOverweight",), {"FeatureImportanceOverweight": ("f7",)}),
]

CONTROLS: list[tuple[str, Callable[[str], None]]] = [
    ("healthy_relu_mlp", healthy_relu_mlp),
    ("healthy_cnn", healthy_cnn),
    ("healthy_tanh_mlp", healthy_tanh_mlp),
    ("healthy_text", healthy_text),
    ("healthy_xgb_classifier", healthy_xgb_classifier),
    ("healthy_xgb_regressor", healthy_xgb_regressor),
]
