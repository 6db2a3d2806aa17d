"""The rule catalog: a registry of rule specs, their parameters and their validation.

A rule is a plain function ``fn(ctx, *, param=default, ...) -> Finding``. :func:`rule` (a
decorator) and :func:`register_rule` put it in the catalog with its metadata: id, problem class,
severity, what it needs from the run (a function of its parameters returning :class:`Need`
objects), allowed parameter ranges, the problem it detects and what usually fixes it.

The registry is a private dict behind a read-only view (:func:`registry`). Third-party rules
arrive through :func:`register_rule` or the entry-point group ``trainaudit.rules`` (an entry
point names a rule function decorated with :func:`rule`, a :class:`RuleSpec`, or a callable
that registers rules). Registering an id twice raises :class:`DuplicateRuleError` naming both
places.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainaudit.capture._errors import DuplicateRuleError, InvalidParameterError, UnknownRuleError

__all__ = [
    "Range",
    "RuleSpec",
    "rule",
    "register_rule",
    "unregister_rule",
    "registry",
    "get_rule",
    "catalog",
    "format_catalog",
    "resolve_params",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "trainaudit.rules"
PROBLEM_CLASSES = ("datasets", "loss", "weights", "gradients", "tensors", "activations", "trees", "custom")


@dataclass(frozen=True)
class Range:
    """An allowed numeric range; ``Range(gt=0)`` reads "expected > 0"."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and math.isnan(v):
            return False
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
        )

    def describe(self) -> str:
        parts = []
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        return " and ".join(parts) if parts else "any number"


@dataclass(frozen=True, kw_only=True)
class RuleSpec:
    """A registered rule and its metadata."""

    id: str
    fn: Callable[..., Any]
    problem_class: str
    severity: str
    needs: Callable[[Mapping[str, Any]], list[Any]]
    title: str = ""
    problem: str = ""
    fix: str = ""
    ranges: Mapping[str, Range] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    source: str = ""

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.fn)
        return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self.parameters.items()}

    @property
    def condition(self) -> str:
        """The first paragraph of the rule's docstring (its condition)."""
        doc = inspect.getdoc(self.fn) or ""
        return doc.split("\n\n", 1)[0].replace("\n", " ")

    def describe(self) -> dict[str, Any]:
        hints = _hints(self.fn)
        return {
            "id": self.id,
            "title": self.title,
            "problem_class": self.problem_class,
            "severity": self.severity,
            "condition": self.condition,
            "parameters": {
                n: {
                    "default": d,
                    "type": _type_name(hints.get(n)),
                    "range": self.ranges[n].describe() if n in self.ranges else None,
                }
                for n, d in self.defaults.items()
            },
            "problem": self.problem,
            "fix": self.fix,
            "source": self.source,
        }


_REGISTRY: dict[str, RuleSpec] = {}
_loaded = {"builtin": False, "entry_points": False}


def registry() -> Mapping[str, RuleSpec]:
    """A read-only view of the registered rules (builtin and entry points loaded)."""
    _ensure_loaded()
    return types.MappingProxyType(_REGISTRY)


def _source_of(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", "?")
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    try:
        line = inspect.getsourcelines(fn)[1]
        file = inspect.getsourcefile(fn) or "?"
        return f"{mod}.{name} ({file}:{line})"
    except (OSError, TypeError):
        return f"{mod}.{name}"


def register_rule(
    fn: Callable[..., Any] | RuleSpec,
    *,
    id: str | None = None,
    problem_class: str = "custom",
    severity: str = "warning",
    needs: Callable[[Mapping[str, Any]], list[Any]] | list[Any] | None = None,
    title: str = "",
    problem: str = "",
    fix: str = "",
    ranges: Mapping[str, Range] | None = None,
    check: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> RuleSpec:
    """Register a rule function (or a ready :class:`RuleSpec`) and return its spec.

    ``needs`` is a list of :class:`~trainaudit.tasks.Need` or a function of the resolved
    parameters returning one. Every parameter of ``fn`` after ``ctx`` must be keyword-only with
    a default. Raises :class:`DuplicateRuleError` when the id is taken by another function.
    """
    if isinstance(fn, RuleSpec):
        spec = fn
    else:
        rid = id or getattr(fn, "__name__", "")
        if not rid:
            raise ValueError("register_rule() needs an id")
        fixed_needs = needs
        if callable(fixed_needs):
            needs_fn = fixed_needs
        else:
            static = list(fixed_needs or [])

            def needs_fn(params: Mapping[str, Any], _static: list[Any] = static) -> list[Any]:
                return _static

        if severity not in ("critical", "warning", "info"):
            raise ValueError(f"severity must be critical, warning or info, got {severity!r}")
        spec = RuleSpec(
            id=rid,
            fn=fn,
            problem_class=problem_class,
            severity=severity,
            needs=needs_fn,  # type: ignore[arg-type]
            title=title or rid,
            problem=problem,
            fix=fix,
            ranges=dict(ranges or {}),
            check=check,
            source=_source_of(fn),
        )
    _check_signature(spec)
    old = _REGISTRY.get(spec.id)
    if old is not None and old.source != spec.source:
        raise DuplicateRuleError(
            f"Rule id {spec.id!r} is registered twice: by {old.source} and by {spec.source}. "
            f"Rename one of them (rule ids are unique across the catalog)."
        )
    _REGISTRY[spec.id] = spec
    return spec


def unregister_rule(rule_id: str) -> None:
    """Remove a rule (tests, notebooks)."""
    _REGISTRY.pop(rule_id, None)


def rule(**meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of :func:`register_rule`; the function is returned unchanged, with its
    spec as ``fn.rule_spec``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = register_rule(fn, **meta)
        fn.rule_spec = spec  # type: ignore[attr-defined]
        return fn

    return deco


def _check_signature(spec: RuleSpec) -> None:
    sig = inspect.signature(spec.fn)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"rule {spec.id!r}: the first parameter must be the positional context")
    for p in params[1:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            raise TypeError(
                f"rule {spec.id!r}: parameter {p.name!r} must be keyword-only with a default "
                f"(def rule(ctx, *, {p.name}=...))"
            )


def _ensure_loaded() -> None:
    if not _loaded["builtin"]:
        _loaded["builtin"] = True
        from trainaudit.tasks import rules as _rules  # noqa: F401  (registers the builtin rules)
    if not _loaded["entry_points"]:
        _loaded["entry_points"] = True
        load_entry_points()


def load_entry_points() -> list[str]:
    """Load the rules of the ``trainaudit.rules`` entry-point group; returns the ids added."""
    from importlib.metadata import entry_points

    before = set(_REGISTRY)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, RuleSpec):
            register_rule(obj)
        elif hasattr(obj, "rule_spec"):
            register_rule(obj.rule_spec)
        elif callable(obj):
            obj()
    return sorted(set(_REGISTRY) - before)


def get_rule(rule_id: str) -> RuleSpec:
    reg = registry()
    try:
        return reg[rule_id]
    except KeyError:
        raise UnknownRuleError(rule_id, list(reg)) from None


def catalog() -> list[dict[str, Any]]:
    """The catalog as plain data: one dict per rule (id, problem class, severity, condition,
    parameters with defaults and ranges, problem, fix), in problem-class order."""
    order = {c: i for i, c in enumerate(PROBLEM_CLASSES)}
    specs = sorted(registry().values(), key=lambda s: (order.get(s.problem_class, 99), s.id))
    return [s.describe() for s in specs]


def format_catalog() -> str:
    """The catalog as a text table (``trainaudit rules``)."""
    lines = []
    for d in catalog():
        params = ", ".join(f"{n}={p['default']!r}" for n, p in d["parameters"].items())
        lines.append(f"{d['id']:<28} {d['problem_class']:<12} {d['severity']:<9} {params}")
    return "\n".join(lines)


def catalog_markdown() -> str:
    """The catalog as the Markdown of ``docs/RULES.md`` (regenerate it with
    ``python -m trainaudit.tasks._catalog > docs/RULES.md``)."""
    import inspect as _inspect

    titles = {"datasets": "Datasets", "loss": "Loss and accuracy", "weights": "Weights", "gradients": "Gradients",
              "tensors": "Tensors", "activations": "Activation functions", "trees": "Decision trees (XGBoost)",
              "custom": "Custom rules"}
    out = [
        "# Rules",
        "",
        "<!-- Generated from the rule docstrings and metadata by "
        "`python -m trainaudit.tasks._catalog > docs/RULES.md`; do not edit by hand. -->",
        "",
        "Every audit evaluates each rule once and returns one finding per rule with the status "
        "`triggered`, `ok`, `not_evaluable` (the data it needs was not captured: the message names the "
        "collection to turn on) or `error` (the rule failed or its data is damaged: the message says where). "
        "The contract (ids, conditions, defaults) is `RULES.md` of the design; this page is what the code does. "
        "Override a parameter per audit with `params={\"DeadRelu\": {\"threshold_layer\": 40}}` "
        "(or `--param DeadRelu.threshold_layer=40`); a value out of range is refused before anything is read.",
        "",
    ]
    current = None
    for d in catalog():
        if d["problem_class"] != current:
            current = d["problem_class"]
            out += [f"## {titles.get(current, current)}", ""]
        spec = _REGISTRY[d["id"]]
        doc = _inspect.getdoc(spec.fn) or ""
        paras = [p.replace("\n", " ") for p in doc.split("\n\n")]
        out += [f"### `{d['id']}`: {d['title']}", "",
                f"*Severity* **{d['severity']}**. {d['problem']}", "",
                f"**Fires when** {paras[0] if paras else ''}", ""]
        for p in paras[1:]:
            out += [p, ""]
        if d["parameters"]:
            out += ["| parameter | default | allowed |", "|---|---|---|"]
            for n, p in d["parameters"].items():
                out.append(f"| `{n}` | `{p['default']!r}` | {(p['range'] or p['type']).replace('|', 'or')} |")
            out.append("")
        out += [f"**Usual fix:** {d['fix']}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Parameters


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


def _type_name(t: Any) -> str:
    if t is None:
        return "any"
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _coerce(rule_id: str, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(rule_id, name, value, a)
            except InvalidParameterError as e:
                errors.append(str(e))
        raise InvalidParameterError(errors[0] if errors else f"{rule_id}: {name}={value!r} has the wrong type")
    if origin in (list, tuple, Iterable, Sequence) or hint in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise InvalidParameterError(f"{rule_id}: {name}={value!r} has the wrong type: expected a list")
        inner = args[0] if args and args[0] is not Ellipsis else None
        return [_coerce(rule_id, name, v, inner) for v in value]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParameterError(f"{rule_id}: {name}={value!r} has the wrong type: expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise InvalidParameterError(f"{rule_id}: {name}={value!r} has the wrong type: expected an integer")
        return int(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidParameterError(f"{rule_id}: {name}={value!r} has the wrong type: expected true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise InvalidParameterError(f"{rule_id}: {name}={value!r} has the wrong type: expected a string")
        return value
    return value


def resolve_params(spec: RuleSpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rule's defaults updated with ``overrides``, type-checked and range-checked.

    Raises :class:`InvalidParameterError` naming the parameter and the allowed range, e.g.
    ``"DeadRelu: threshold_layer=-1 is out of range: expected >= 0 and <= 100"``.
    """
    defaults = spec.defaults
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise InvalidParameterError(
            f"{spec.id}: unknown parameter {unknown[0]!r}; the parameters of {spec.id} are "
            f"{', '.join(defaults) or '(none)'}"
        )
    hints = _hints(spec.fn)
    out = {n: list(v) if isinstance(v, tuple) else v for n, v in defaults.items()}
    for name, value in overrides.items():
        out[name] = _coerce(spec.id, name, value, hints.get(name))
    for name, rng in spec.ranges.items():
        values: list[Any] | tuple[Any, ...] = out[name] if isinstance(out[name], list | tuple) else [out[name]]
        for v in values:
            if v is None:
                continue
            if not rng.contains(v):
                raise InvalidParameterError(
                    f"{spec.id}: {name}={v!r} is out of range: expected {rng.describe()}"
                )
    if spec.check is not None:
        msg = spec.check(out)
        if msg:
            raise InvalidParameterError(f"{spec.id}: {msg}")
    return out


if __name__ == "__main__":
    # run as a script this module is a second copy: use the package's registry
    from trainaudit.tasks._catalog import catalog_markdown as _md

    print(_md(), end="")
