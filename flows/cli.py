"""The ``trainaudit`` command line.

Exit codes: 0 clean, 1 findings at or above ``--fail-on``, 2 usage or input errors (a missing
run, an unknown rule id, a bad parameter), 130 interrupted. Strings from the command line are
converted here, once, at the edge: flows and rules receive typed values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "parse_param"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


class UsageError(Exception):
    """A bad command line: reported as one line on stderr, exit code 2."""


def parse_param(text: str) -> tuple[str, str, Any]:
    """``Rule.name=value`` -> ``("Rule", "name", value)``; the value is parsed as JSON when it
    can be (numbers, true/false, null, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    rule, dot, name = key.partition(".")
    if not sep or not dot or not rule or not name:
        raise UsageError(f"--param {text!r}: expected RULE.PARAMETER=VALUE, e.g. DeadRelu.threshold_layer=40")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return rule, name, value


def _params(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        rule, name, value = parse_param(item)
        out.setdefault(rule, {})[name] = value
    return out


def _rules(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [r.strip() for r in text.split(",") if r.strip()]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainaudit",
        description="Audit machine-learning training runs captured by trainaudit's hooks.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="train three small models, capture, audit and report them")
    d.add_argument("--out", default="trainaudit-demo", help="folder for the runs and audits (default: %(default)s)")
    d.add_argument("--dask-address", help="use an existing Dask cluster (tcp://host:port)")

    a = sub.add_parser("audit", help="audit one run: audit.json + report.html")
    a.add_argument("uri", help="the run: a local path, file://, s3://bucket/prefix")
    a.add_argument("--rules", help="comma-separated rule ids (default: the whole catalog)")
    a.add_argument("--param", action="append", metavar="RULE.NAME=VALUE", help="override a rule parameter (repeatable)")
    a.add_argument("--out", help="output folder (default: ./trainaudit-audits/<run id>)")
    a.add_argument("--dask-address", help="use an existing Dask cluster (tcp://host:port)")
    a.add_argument("--fail-on", choices=["critical", "warning", "info", "never"], default="critical",
                   help="exit 1 when a finding at or above this severity fired (default: %(default)s)")
    a.add_argument("--no-prefect", action="store_true", help="run the audit without Prefect (same code, no flow run)")

    sub.add_parser("rules", help="list the rule catalog")

    s = sub.add_parser("show", help="what a run holds: ranks, modes, steps, collections, status, capture errors")
    s.add_argument("uri")
    s.add_argument("--json", action="store_true", help="print JSON")

    sv = sub.add_parser("serve", help="serve the scheduled audit of every new run under a prefix (Prefect deployment)")
    sv.add_argument("--prefix", required=True, help="where runs land (local folder or s3://bucket/prefix)")
    sv.add_argument("--out", required=True, help="where audits go (local folder or s3://...)")
    sv.add_argument("--cron", default="*/15 * * * *", help="schedule (default: %(default)r)")
    sv.add_argument("--name", default="audit-new-runs", help="deployment name (default: %(default)s)")
    sv.add_argument("--dask-address", help="use an existing Dask cluster (tcp://host:port)")

    w = sub.add_parser("watch", help="audit a run while it trains; optionally ask it to stop")
    w.add_argument("uri")
    w.add_argument("--interval", type=float, default=30.0, help="seconds between passes (default: %(default)s)")
    w.add_argument("--stall-seconds", type=float, default=300.0, help="StalledTraining threshold (default: %(default)s)")
    w.add_argument("--stop-on", help="comma-separated rule ids, or 'critical': request a stop when one fires")
    w.add_argument("--rules", help="comma-separated rule ids (default: the whole catalog)")
    w.add_argument("--param", action="append", metavar="RULE.NAME=VALUE")
    w.add_argument("--out", help="output folder for the latest audit")
    w.add_argument("--max-passes", type=int, help="stop watching after this many passes")
    w.add_argument("--dask-address", help="use an existing Dask cluster (tcp://host:port)")
    return p


def _quiet_defaults() -> None:
    """Defaults for a command-line run, each overridable from the environment: the first flow
    run starts Prefect's ephemeral server, which takes longer than Prefect's default timeout
    on a busy 2-core machine (NOTES.md); Dask's INFO chatter hides our progress lines."""
    import logging

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed loads
    logging.getLogger("distributed").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_defaults()
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from trainaudit.capture import TrainauditError

    try:
        handler = globals()[f"_cmd_{args.command}"]
        return int(handler(args))
    except UsageError as exc:
        print(f"trainaudit {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainauditError as exc:
        print(f"trainaudit {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.out, dask_address=args.dask_address)


def _cmd_rules(args: argparse.Namespace) -> int:
    from trainaudit.tasks import format_catalog

    print(format_catalog())
    return EXIT_OK


def _check_rules(rules: list[str] | None) -> None:
    if not rules:
        return
    from trainaudit.capture import UnknownRuleError
    from trainaudit.tasks import catalog

    known = [r["id"] for r in catalog()]
    for r in rules:
        if r not in known:
            raise UnknownRuleError(r, known)


def _cmd_audit(args: argparse.Namespace) -> int:
    from trainaudit.capture import open_run

    from ._runs import audit_dir

    rules = _rules(args.rules)
    params = _params(args.param)
    _check_rules(rules)
    _check_rules(list(params) or None)
    run = open_run(args.uri)  # fail fast, with a clear message, before any cluster starts
    out = args.out or audit_dir("trainaudit-audits", run.run_id)
    _progress(f"auditing {run.uri} ({run.framework}, {run.status}, {sum(run.committed_steps(r) for r in run.ranks)} steps)")
    if args.no_prefect:
        from trainaudit.reports import write_report
        from trainaudit.tasks import audit

        result = audit(run.uri, rules=rules, params=params, address=args.dask_address)
        report = write_report(result, out)
        _progress("audited in " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    else:
        from ._audit import audit_run

        outcome = audit_run(run.uri, rules=rules, params=params, out=out, dask_address=args.dask_address, progress=True)
        result, report = outcome.result, outcome.report_path
    _print_summary(result)
    print(f"report: {report}")
    print(f"audit.json: {os.path.join(os.path.dirname(str(report)), 'audit.json')}")
    return _exit_code(result, args.fail_on)


def _exit_code(result: Any, fail_on: str) -> int:
    if fail_on == "never":
        return EXIT_OK
    floor = SEVERITY_ORDER[fail_on]
    return EXIT_FINDINGS if any(SEVERITY_ORDER[f.severity] >= floor for f in result.triggered) else EXIT_OK


def _print_summary(result: Any) -> None:
    c = result.counts()
    print(f"verdict: {result.verdict().upper()}  ({c['critical']} critical, {c['warning']} warning, {c['info']} info; "
          f"{c['not_evaluable']} not evaluable, {c['error']} errors)")
    order = {"triggered": 0, "error": 1, "not_evaluable": 2, "ok": 3}
    for f in sorted(result.findings, key=lambda f: (order[f.status], -SEVERITY_ORDER[f.severity], f.rule)):
        mark = {"triggered": "FIRED", "error": "ERROR", "not_evaluable": "n/a", "ok": "ok"}[f.status]
        print(f"  {mark:<6} {f.severity:<8} {f.rule:<28} {f.message}")


def _progress(text: str) -> None:
    print(f"[trainaudit] {text}", file=sys.stderr, flush=True)


def _cmd_show(args: argparse.Namespace) -> int:
    from ._show import describe_run, format_description

    desc = describe_run(args.uri)
    print(json.dumps(desc, indent=1, default=str) if args.json else format_description(desc))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._schedule import serve

    serve(prefix=args.prefix, out=args.out, cron=args.cron, name=args.name, dask_address=args.dask_address)
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from ._watch import watch_run

    rules = _rules(args.rules)
    _check_rules(rules)
    stop_on = _rules(args.stop_on)
    if stop_on and stop_on != ["critical"]:
        _check_rules(stop_on)
    summary = watch_run(
        args.uri, interval=args.interval, stall_seconds=args.stall_seconds, stop_on=stop_on, rules=rules,
        params=_params(args.param), out=args.out, max_passes=args.max_passes, dask_address=args.dask_address,
    )
    print(json.dumps(summary, indent=1, default=str))
    return EXIT_FINDINGS if summary.get("stop_requested") else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
