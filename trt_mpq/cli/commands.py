"""The commands besides `search` and `serve`: zoo, inspect, calibrate, build, evaluate,
sensitivity, report. Each parses into the library's config objects (`cli.settings`) and calls
the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from trt_mpq import options
from trt_mpq.cli import settings
from trt_mpq.cli.exits import EXIT_BUDGET, EXIT_OK
from trt_mpq.pipeline.folders import check_writable, new_folder

log = __import__("logging").getLogger("trt_mpq.cli")


def cmd_zoo(args) -> int:
    from trt_mpq.zoo import ZOO

    width = max(len(n) for n in ZOO)
    for name, e in ZOO.items():
        print(f"{name:<{width}}  [{e.weights}]  {e.description}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    import onnx

    from trt_mpq.model.groups import find_groups
    from trt_mpq.model.load import prepare_model
    from trt_mpq.pipeline.workspace import looks_like_path, model_input_specs, resolve_task

    cache = settings.cache_dir(args)
    if looks_like_path(args.model) and not args.opt_task:
        source = Path(args.model)
    else:
        source = resolve_task(args.model, args.opt_task, cache, settings.progress(args)).model_path
    prepared = prepare_model(source, cache)
    model = onnx.load(str(prepared))
    groups = find_groups(model)
    inputs = model_input_specs(model)
    if args.json:
        print(json.dumps({"model": str(source), "inputs": {k: {"dtype": d, "shape": list(s)}
                                                           for k, (d, s) in inputs.items()},
                          "groups": [g.to_json_dict() for g in groups]}, indent=2))
        return EXIT_OK
    print(f"model: {source}")
    for name, (dtype, shape) in inputs.items():
        print(f"input: {name} {dtype} {list(shape)}")
    for o in model.graph.output:
        print(f"output: {o.name}")
    w = min(70, max(len(g.name) for g in groups))
    print(f"\n{'group':<{w}}  {'op':<7} {'ops':>3}  {'weight shape':<18} {'MACs':>14} "
          f"{'params':>11}")
    for g in groups:
        shape = "x".join(str(d) for d in g.ops[0].weight_shape)
        print(f"{g.name[-w:]:<{w}}  {g.op_type:<7} {len(g.ops):>3}  {shape:<18} "
              f"{g.macs:>14,} {g.params:>11,}")
    print(f"\n{len(groups)} groups, {sum(len(g.ops) for g in groups)} quantizable ops, "
          f"{sum(g.macs for g in groups):,} MACs per sample, {sum(g.params for g in groups):,} "
          "weights")
    return EXIT_OK


def cmd_calibrate(args) -> int:
    ws = settings.workspace(args)
    config = settings.calibration(args)
    t0 = time.perf_counter()
    ranges = ws.calibrate(config)
    print(json.dumps({"model": ws.task.name, "method": ranges.method.value,
                      "samples": ranges.num_samples, "tensors": len(ranges.values),
                      "ranges_digest": ranges.digest,
                      "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return EXIT_OK


def _plan_arg(args, ws):
    """The plan of --plan FILE or --uniform PRECISION, checked against the model's groups."""
    from trt_mpq.errors import PlanError
    from trt_mpq.plan import Plan, Precision

    if args.plan:
        try:
            text = Path(args.plan).read_text()
        except OSError as e:
            raise PlanError(f"cannot read the plan file {args.plan}: {e.strerror}") from None
        return Plan.from_json(text, ws.group_names())
    return Plan.uniform(ws.group_names(), Precision.parse(args.uniform))


def cmd_build(args) -> int:
    """Build one plan into an artifact folder; exit 1 if the built artifact does not run the
    plan's precisions (its census disagrees)."""
    from trt_mpq.pipeline.artifacts import update_sidecar
    from trt_mpq.qdq import materialize
    from trt_mpq.report import write_text

    backend = settings.backend(args)
    ws = settings.workspace(args)
    plan = _plan_arg(args, ws)
    backend.check_plan(plan, ws.groups)
    out = new_folder(args.out, f"{ws.task.name}-{backend.name}-build")
    ranges = ws.calibrate(settings.calibration(args))
    graph = materialize(ws.model, ws.groups, plan, ranges, backend.dialect)
    artifact = backend.build(graph, out, ws.groups, ws.task.latency_feed(),
                             max_batch=ws.task.eval_batch, options=dict(plan.options))
    write_text(out / "plan.json", plan.to_json() + "\n")
    bad = artifact.census.mismatches(plan) if artifact.census else []
    update_sidecar(artifact.path, {"plan": plan.to_json_dict()["groups"],
                                   "runtime_options": dict(plan.options), "model": ws.task.name,
                                   "census_matches_plan": not bad})
    print(json.dumps({"artifact": str(artifact.path), "build_s": round(artifact.build_s, 3),
                      "precision_counts": plan.counts(),
                      "census": artifact.census.to_json_dict() if artifact.census else None,
                      "mismatches": [{"group": g, "planned": p, "ran": x} for g, p, x in bad]},
                     indent=2))
    if bad:
        print(f"precision-mismatch: {len(bad)} group(s) do not run as planned, e.g. "
              f"{bad[0][0]}: planned {bad[0][1]}, ran {bad[0][2]}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK


def cmd_evaluate(args) -> int:
    import tempfile

    from trt_mpq.pipeline.evaluator import Evaluator, shared_cache

    if args.out:
        check_writable(Path(args.out), "--out", folder=False)
    backend = settings.backend(args)
    backend.check_can_run()
    measure = settings.measure(args)
    ws = settings.workspace(args).at_shapes(measure.shapes, measure.shape_weights)
    plan = _plan_arg(args, ws)
    backend.check_plan(plan, ws.groups)
    ranges = ws.calibrate(settings.calibration(args))
    with tempfile.TemporaryDirectory(prefix="trt-mpq-eval-") as tmp:
        with Evaluator(ws, backend, ranges, measure, None, Path(tmp),
                       shared=shared_cache(ws, backend)) as ev:
            evaluation = ev.evaluate(plan, "evaluate")
            baseline_metric = ev.baseline.metric
    out = {"model": ws.task.name, "backend": backend.name, "weights": ws.task.weights,
           "baseline_metric": baseline_metric, **evaluation.to_json_dict()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from trt_mpq.report import write_text

        write_text(Path(args.out), text + "\n")
    if not evaluation.ok:
        print(f"the plan did not produce a measurement: {evaluation.status.value}: "
              f"{evaluation.reason}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_OK


def cmd_sensitivity(args) -> int:
    from trt_mpq.pipeline.analysis import analyze
    from trt_mpq.pipeline.search import low_precisions
    from trt_mpq.report import plot_orders, write_json
    from trt_mpq.sensitivity import SensitivityConfig, get_metric

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in metrics:
        get_metric(m)  # unknown names fail before any work
    values = settings.values(args)
    config = options.build(SensitivityConfig, values)
    backend = settings.backend(args)
    ws = settings.workspace(args)
    precision = options.coerce(_search_option("precision"), values.get("precision"))
    torch_spec = options.coerce(_search_option("torch"), values.get("torch"))
    low = low_precisions(ws, backend, precision)
    ranges = ws.calibrate(settings.calibration(args))
    report = analyze(ws, backend, ranges, low, metrics, config, reference=not args.no_reference,
                     gains=args.gains, torch_spec=torch_spec)
    for m in metrics:
        r = report["metrics"][m]
        q = report.get("order_quality", {}).get(m, {})
        corr = (f"  spearman {q['spearman']:+.2f} kendall {q['kendall']:+.2f}"
                if q.get("spearman") is not None else "")
        log.info("%-13s %6.1f s %6d passes%s   most sensitive: %s", m, r["seconds"], r["passes"],
                 corr, r["order"][-1])
    if args.out:
        out = Path(args.out)
        write_json(out / "sensitivity.json", report)
        if "reference" in report:
            plot_orders(report, out / "sensitivity.png")
        print(out / "sensitivity.json")
    else:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def cmd_report(args) -> int:
    from trt_mpq.report import regenerate

    for p in regenerate(args.out):
        print(p)
    return EXIT_OK


def _search_option(key: str) -> options.Option:
    from trt_mpq.pipeline.config import SearchConfig

    return next(o for o in options.options_of(SearchConfig) if o.key == key)
