"""`inferline eval run|resume|report|list|calibrate`: experiments over a dataset through
a running server, their reports, and judge calibrations."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from inferline.cli.main import default_cache_dir


def _server_args(p: Any) -> None:
    p.add_argument(
        "--base-url", default=os.environ.get("INFERLINE_BASE_URL", "http://127.0.0.1:8000")
    )
    p.add_argument("--api-key", default=None, help="default: $INFERLINE_API_KEY")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--use-cache", action="store_true",
        help="let the response cache answer (default: Cache-Control no-store)",
    )  # fmt: skip


def _output_args(p: Any) -> None:
    p.add_argument("--json", type=Path, default=None, help="write the JSON result here")
    p.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    p.add_argument("--fail-under", type=float, default=None,
                   help="exit 1 when a target's pass rate is below this")  # fmt: skip


def register(sub: Any) -> None:
    """Adds the ``eval`` subcommand and its actions."""
    p = sub.add_parser("eval", help="experiments: a dataset on targets, scored; calibrations")
    actions = p.add_subparsers(dest="action", required=True)
    run_p = actions.add_parser("run", help="run a dataset through the gateway on targets")
    run_p.add_argument("dataset", help="NAME or NAME@VERSION")
    run_p.add_argument(
        "--target", action="append", required=True,
        help="ROUTE, model:NAME or prompt:ID[@VERSION][/MODEL] (repeat)",
    )  # fmt: skip
    run_p.add_argument(
        "--scorer", action="append", required=True,
        help="exact, contains, regex:RE, json_schema:FILE, json_field[:PATH], "
        "numeric[:TOL], embedding[:MIN], judge:PROMPT[@V], python:MOD:FN",
    )  # fmt: skip
    run_p.add_argument("--repetitions", type=int, default=1)
    run_p.add_argument("--param", action="append", default=[], help="KEY=JSON, e.g. temperature=0")
    run_p.add_argument("--name", default=None)
    run_p.add_argument(
        "--pairwise", default=None, metavar="PROMPT[@V][/MODEL]",
        help="also judge each target's answer against the first target's",
    )  # fmt: skip
    resume = actions.add_parser("resume", help="go on with an experiment (after a crash)")
    resume.add_argument("experiment")
    resume.add_argument("--retry-errors", action="store_true", help="run failed requests again")
    for action in (run_p, resume):
        _server_args(action)
    report = actions.add_parser("report", help="an experiment's result again")
    report.add_argument("experiment")
    report.add_argument("--export", type=Path, default=None, help="every row, .jsonl or .csv")
    for action in (run_p, resume, report):
        _output_args(action)
    fit = actions.add_parser("fit-threshold", help="the cascade's escalation threshold")
    fit.add_argument("experiment", help="one that ran --target SMALL and LARGE, with logprobs")
    fit.add_argument("--small", required=True, help="the cheap target, as in the experiment")
    fit.add_argument("--large", required=True, help="the target it escalates to")
    target = fit.add_mutually_exclusive_group(required=True)
    target.add_argument("--max-error", type=float, help="the cheapest threshold within this")
    target.add_argument("--max-cost", type=float, help="the most accurate within this $/item")
    fit.add_argument("--json", type=Path, default=None, help="write the curve here")
    fit.add_argument("--html", type=Path, default=None, help="write the curve's plot here")
    actions.add_parser("list", help="experiments, newest first")
    cal = actions.add_parser("calibrate", help="a judge against human verdicts")
    cal.add_argument("--judge", required=True, help="PROMPT[@VERSION][/MODEL]")
    cal.add_argument("--labels", required=True, help="a dataset (NAME[@VERSION]), e.g. reviews/bot")
    cal.add_argument("--threshold", type=float, default=0.5)
    _server_args(cal)
    for action in actions.choices.values():
        action.add_argument("--database-url", default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Runs one action."""
    from inferline.store import connect, default_database_url, migrate

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    if args.action == "list":
        return _list(database)
    if args.action == "report":
        return _report(args, database)
    if args.action == "fit-threshold":
        return _fit(args, database)
    return asyncio.run(_run_async(args, database))


async def _run_async(args: argparse.Namespace, database: Any) -> int:
    from inferline.evals.gateway import HttpGateway

    headers = {} if args.use_cache else {"cache-control": "no-store"}
    key = args.api_key or os.environ.get("INFERLINE_API_KEY")
    gateway = HttpGateway(args.base_url, key, headers=headers)
    try:
        if args.action == "calibrate":
            return await _calibrate(args, database, gateway)
        return await _experiment(args, database, gateway)
    finally:
        await gateway.aclose()


def _context(database: Any, gateway: Any) -> Any:
    from inferline.cli.scorers import text_embedder
    from inferline.evals.scorer_specs import ScorerContext
    from inferline.prompts import PromptRegistry
    from inferline.store.prompts import PromptStore

    registry = PromptRegistry(PromptStore(database))
    return ScorerContext(
        gateway=gateway, resolve_prompt=lambda p, v: registry.version_of(p, v)[0],
        make_embed=text_embedder, base_dir=Path.cwd(),
    )  # fmt: skip


async def _experiment(args: argparse.Namespace, database: Any, gateway: Any) -> int:
    from inferline.cli.datasets import split_version
    from inferline.evals.experiment import Plan, Runner, plan_of, start
    from inferline.evals.scorer_specs import build_scorer
    from inferline.store.datasets import DatasetStore
    from inferline.store.experiments import ExperimentStore

    experiments, datasets = ExperimentStore(database), DatasetStore(database)
    if args.action == "run":
        name, version = split_version(args.dataset)
        version = version or datasets.get(name)["latest_version"]
        plan = Plan(name, version, tuple(args.target), tuple(args.scorer), args.repetitions,
                    _params(args.param), args.name, args.pairwise)  # fmt: skip
        scorers = [build_scorer(s, _context(database, gateway)) for s in plan.scorers]
        experiment = start(experiments, datasets, plan)
    else:
        experiment = experiments.get(args.experiment)
        plan = plan_of(experiment)
        scorers = [build_scorer(s, _context(database, gateway)) for s in plan.scorers]
        if args.retry_errors:
            experiments.forget_errors(experiment["id"])
    print(f"experiment {experiment['id']}: {plan.dataset} v{plan.dataset_version}", file=sys.stderr)
    items = datasets.items(plan.dataset, plan.dataset_version)
    runner = Runner(experiments, gateway, scorers, concurrency=args.concurrency)
    await _with_progress(runner, experiment["id"], items)
    if plan.pairwise is not None:
        from inferline.evals.judges import PairwiseJudge, judge_spec
        from inferline.evals.pairwise import judge_pairs

        context = _context(database, gateway)
        judge = PairwiseJudge(judge_spec(plan.pairwise, context.resolve_prompt), gateway)
        written = await judge_pairs(experiments, experiment["id"], plan.targets, items, judge,
                                    args.concurrency)  # fmt: skip
        print(f"{written} pairwise verdicts written", file=sys.stderr)
    return _report(argparse.Namespace(**{**vars(args), "experiment": experiment["id"],
                                         "export": None}), database)  # fmt: skip


async def _with_progress(runner: Any, experiment_id: str, items: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from inferline.evals.experiment import Progress as Counts

    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("items", total=None)
        counts = Counts(on_result=lambda row: bar.update(task, advance=1))

        async def started() -> None:
            while counts.total == 0:
                await asyncio.sleep(0.05)
            bar.update(task, total=counts.total, completed=counts.skipped)

        watcher = asyncio.create_task(started())
        try:
            await runner.run(experiment_id, items, counts)
        finally:
            watcher.cancel()
    print(f"{counts.done} rows written ({counts.failed} failed requests), "
          f"{counts.skipped} already there", file=sys.stderr)  # fmt: skip


def _params(pairs: list[str]) -> dict[str, Any]:
    from inferline.core.errors import InvalidParameterError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--param {pair!r}: write KEY=VALUE", "param")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _report(args: argparse.Namespace, database: Any) -> int:
    from inferline.evals import html
    from inferline.evals.report import disagreements, failing_targets, summarize
    from inferline.store.experiments import ExperimentStore

    store = ExperimentStore(database)
    experiment = store.get(args.experiment)
    rows = store.rows(experiment["id"])
    summary = summarize(experiment, rows)
    print(_table(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.html is not None:
        targets = experiment["config"]["targets"]
        args.html.write_text(html.render(summary, rows, disagreements(rows, targets)))
    if getattr(args, "export", None) is not None:
        _export_rows(args.export, rows)
    if args.fail_under is not None:
        failing = failing_targets(summary, args.fail_under)
        if failing:
            print(f"below {args.fail_under}: {', '.join(failing)}", file=sys.stderr)
            return 1
    return 0


def _export_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from inferline.evals.items import to_csv, to_jsonl

    path.write_text(to_csv(rows) if path.suffix.lower() == ".csv" else to_jsonl(rows))


def _table(summary: dict[str, Any]) -> str:
    def num(value: Any, pattern: str = "{:.3f}") -> str:
        return "-" if value is None or value != value else pattern.format(value)

    lines = [f"{'target':32} {'n':>5} {'err':>4} {'pass':>6} {'95% CI':>15} {'p50 s':>7} "
             f"{'p95 s':>7} {'$/item':>10} {'$/success':>10}"]  # fmt: skip
    for target, s in summary["targets"].items():
        ci = f"[{num(s['ci95'][0], '{:.2f}')}, {num(s['ci95'][1], '{:.2f}')}]"
        lines.append(
            f"{target[:32]:32} {s['rows']:>5} {s['errors']:>4} {num(s['mean']):>6} {ci:>15} "
            f"{num(s['latency']['p50_s']):>7} {num(s['latency']['p95_s']):>7} "
            f"{num(s['cost']['per_item_usd'], '{:.6f}'):>10} "
            f"{num(s['cost']['per_success_usd'], '{:.6f}'):>10}"
        )  # fmt: skip
    for w in summary["pairwise"]:
        lines.append(f"{w['target']} vs {w['baseline']} (pairwise judge): win rate "
                     f"{num(w['win_rate'])} [{num(w['ci95'][0])}, {num(w['ci95'][1])}], "
                     f"{w['wins']}/{w['losses']}/{w['ties']} won/lost/tied, verdicts kept "
                     f"under the swap {num(w['consistent'])}")  # fmt: skip
    for c in summary["comparisons"]:
        p_value = num(c["p_value"], "{:.4f}")
        lines.append(f"{c['target']} - {c['baseline']} ({c['metric']}): {num(c['mean'])} "
                     f"[{num(c['ci95'][0])}, {num(c['ci95'][1])}], p = {p_value}")  # fmt: skip
    return "\n".join(lines)


def _fit(args: argparse.Namespace, database: Any) -> int:
    from inferline.evals import html
    from inferline.evals.threshold import choose, curve, pairs_of
    from inferline.store.experiments import ExperimentStore

    rows = ExperimentStore(database).rows(args.experiment)
    points = curve(pairs_of(rows, args.small, args.large))
    chosen = choose(points, max_error=args.max_error, max_cost=args.max_cost)
    print(f"{'threshold':>10} {'escalated':>9} {'error':>6} {'$/item':>10}")
    for p in points:
        mark = "  <- chosen" if p is chosen else ""
        print(f"{p['threshold']:>10.4f} {p['escalated']:>9.3f} {p['error']:>6.3f} "
              f"{p['cost_per_item']:>10.6f}{mark}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"curve": points, "chosen": chosen}, default=str))
    if args.html is not None:
        args.html.write_text(
            html.curve_page(f"Cascade {args.small} -> {args.large}", points, chosen)
        )
    if chosen is None:
        print("no threshold meets the target", file=sys.stderr)
        return 1
    print(f"route check: {{on: output, kind: logprob, min_mean: {chosen['threshold']:.4f}, "
          f"action: escalate}}  # error {chosen['error']:.3f}, "
          f"${chosen['cost_per_item']:.6f}/item")  # fmt: skip
    return 0


def _list(database: Any) -> int:
    from inferline.store.experiments import ExperimentStore

    for e in ExperimentStore(database).recent():
        targets = ", ".join(e["config"]["targets"])
        print(f"{e['id']}  {e['status']:8} {e['dataset']} v{e['dataset_version']}  {targets}"
              + (f"  ({e['name']})" if e["name"] else ""))  # fmt: skip
    return 0


async def _calibrate(args: argparse.Namespace, database: Any, gateway: Any) -> int:
    from inferline.cli.datasets import split_version
    from inferline.evals.calibration import calibrate, labelled
    from inferline.evals.judges import Judge, judge_spec
    from inferline.store.datasets import DatasetStore
    from inferline.store.experiments import ExperimentStore

    context = _context(database, gateway)
    judge = Judge(judge_spec(args.judge, context.resolve_prompt), gateway)
    name, version = split_version(args.labels)
    datasets = DatasetStore(database)
    version = version or datasets.get(name)["latest_version"]
    cases = labelled(datasets.items(name, version))
    result = await calibrate(judge, cases, threshold=args.threshold, concurrency=args.concurrency)
    details = {
        k: result[k] for k in ("threshold", "confusion", "best", "no_score", "cost_usd", "cases")
    }
    stored = ExperimentStore(database).add_calibration({
        "judge": judge.spec.prompt_id, "judge_version": judge.spec.version,
        "route": judge.spec.model, "labels": f"{name}@{version}", "n": result["n"],
        "agreement": result["agreement"], "kappa": result["kappa"],
        "baseline_agreement": result["baseline_agreement"], "tpr": result["tpr"],
        "tnr": result["tnr"], "details": details,
    })  # fmt: skip
    best = result["best"]
    print(f"judge {judge.spec.label} on {name}@{version}: n={result['n']} "
          f"agreement={result['agreement']:.3f} "
          f"(constant baseline {result['baseline_agreement']:.3f}) "
          f"kappa={_fmt(result['kappa'])} TPR={_fmt(result['tpr'])} TNR={_fmt(result['tnr'])} "
          f"at threshold {args.threshold}; best kappa {_fmt(best['kappa'])} "
          f"at {best['threshold']:.3f}; {result['no_score']} unscored; "
          f"cost ${result['cost_usd']:.6f}; calibration #{stored['id']}")  # fmt: skip
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
