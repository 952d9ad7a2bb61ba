"""Side-by-side comparison of mixed-precision methods, same backend, model, data and budgets for
every row; writes the "Method comparison" section of benchmarks/RESULTS.md and one frontier plot
per model (benchmarks/compare_<model>.png).

    python benchmarks/compare_methods.py --models resnet-digits minilm-sentiment
    python benchmarks/compare_methods.py --models tiny --no-write     # a quick self-check

Rows (what each established tool does, reimplemented on our measured pipeline):
  (a) uniform        every group lowered
  (b) graph-order    the first N groups (graph order) kept high, N bisected: Polygraphy's
                     `debug precision`
  (c) aimet          one-at-a-time accuracy ranking, bisection over the ranked list: AIMET AMP
  (d) hawq           Hessian-trace ranking + bisection: HAWQ and the paper's own baseline
  (e) autoquantize   Fisher score + integer program under a bit budget, the budget lowered until
                     the accuracy holds: Model Optimizer's AutoQuantize
  (f) random         random order + bisection, median over 5 seeds
  (g) deps           hessian+deps ranking + bisection: the paper's method
  (h) ours-v1        hessian+deps per unit of *measured* latency gain + bisection, refinement
                     and a prefix sweep; the fastest measured in-budget plan
  (i) ours           the `boundary` strategy (`trt-mpq search --strategy boundary`): an integer
                     program on a latency model with precision-boundary costs, refitted on every
                     measured plan, every precision a group's op supports as an option
Budgets are certified as `trt-mpq search` certifies them: plans are judged in budget on the
search split by their 95% upper bound where the split can certify the budget (else the point
estimate), evaluated adaptively (looks at n/16 .. n), and a method's answer is the fastest of its
in-budget plans faster than FP32 whose holdout drop is *certified* (upper bound within budget;
up to 3 tried, in the order of one joint re-timing with FP32, as `trt-mpq search` tries its
finalists). Each budget is judged by the task's own metric where its holdout can certify it
(`trt_mpq.pipeline.search.resolvable`), else by top-1 agreement with FP32 on the task's fidelity
split; 0.01% always by agreement.
Columns per budget (1%, 0.1%, 0.01% relative): the answer's measured latency ratio, the upper
bound of its holdout drop and the holdout samples that certified it; per method: evaluations,
wall time (its own sensitivity and profiling cost + the recorded time of every evaluation it
needed), and the area of the (ratio, drop) region its measured points dominate (larger is
better, see trt_mpq.search.area_under_frontier). Every latency is interleaved with the FP32
baseline in one process; evaluations are shared through one store per model and metric (a plan
two methods propose is measured once, and both are charged for it).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
BUDGETS = ("1%", "0.1%", "0.01%")
METHODS = ("uniform", "graph-order", "aimet", "hawq", "autoquantize", "random", "deps", "ours-v1",
           "ours")
CONFIDENCE = 0.95


def _workspace(name: str, cache: Path, metric: str | None = None):
    from trt_mpq.pipeline.workspace import Workspace

    if name == "tiny":  # the test fixture: a small CNN on digits (trained here, seconds)
        import os

        sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
        import digits_task

        path = cache / "tiny" / "digits_cnn.onnx"
        if not path.exists():
            digits_task.train_and_export(path, epochs=6)
        os.environ[digits_task.TWIN_ENV] = str(path.with_suffix(".pt"))
        return Workspace.open(str(path), "digits_task:make_task", cache, progress=False,
                              metric=metric)
    return Workspace.open(name, None, cache, progress=False, metric=metric)


class Runner:
    """One model: workspace, calibration, baseline, shared evaluation store."""

    def __init__(self, name: str, cache: Path, out: Path, repeats: int,
                 metric: str | None = None) -> None:
        from trt_mpq.backends import get_backend
        from trt_mpq.calib import CalibConfig
        from trt_mpq.measure import MeasureConfig
        from trt_mpq.pipeline.evaluator import Evaluator
        from trt_mpq.pipeline.search import low_precisions
        from trt_mpq.store import Store

        self.ws = _workspace(name, cache, metric)
        self.metric = self.ws.task.metric.name
        self.backend = get_backend("ort-cpu")
        self.ranges = self.ws.calibrate(CalibConfig())
        self.low = low_precisions(self.ws, self.backend, None)
        measure = MeasureConfig(repeats=repeats, min_repeats=min(15, repeats))
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        context = {"model": self.ws.model_digest, "data": self.ws.task.data_digest,
                   "backend": self.backend.describe(), "ranges": self.ranges.digest,
                   "measure": measure.to_json_dict()}
        self.store = Store(out / "store.sqlite", context)
        self.evaluator = Evaluator(self.ws, self.backend, self.ranges, measure, self.store,
                                   out / ".work").__enter__()
        self.baseline_metric = self.evaluator.baseline.metric  # on the search split
        task = self.ws.task
        self.holdout_outputs = self.evaluator.reference_outputs(task.holdout, "holdout")
        self.holdout_metric = task.metric(self.holdout_outputs, task.metric.target(
            task.holdout.labels, self.holdout_outputs))
        self.names = self.ws.group_names()
        from trt_mpq.qdq import BASELINE

        self.base = BASELINE[self.backend.dialect]
        self.holdout_rule = None
        self.answers: dict = {}  # digest -> Evaluation of every plan a method answered with
        self._gains: dict = {}  # low plan digest -> (Gains, seconds its profile took)
        self._formats: dict = {}  # with sensitivity? -> (per-option numbers, seconds)

    def use_budget(self, budget):
        """Judge plans against `budget` as `trt-mpq search` does: the search split's adaptive
        rule, bound or point decision; returns the accept function."""
        from trt_mpq.pipeline.config import SearchConfig
        from trt_mpq.pipeline.judging import judge, rules

        config = SearchConfig(budget=budget, confidence=CONFIDENCE)
        _, self.holdout_rule = rules(config, self.holdout_metric)
        self.evaluator.rule, _, accept = judge(self.ws, config, self.baseline_metric)
        return accept

    def close(self) -> None:
        self.evaluator.__exit__(None, None, None)
        self.store.close()

    def sensitivity(self, metric: str):
        from trt_mpq.pipeline import analysis
        from trt_mpq.sensitivity import SensitivityConfig

        return analysis.sensitivity(self.ws, self.ranges, self.backend.dialect, self.low, metric,
                                    SensitivityConfig(), self.store)

    def gains(self):
        """The default low precisions' per-group profile and what it cost when first made (a
        method using it is charged that cost, whichever method made it)."""
        from trt_mpq.pipeline import analysis

        if "low" not in self._gains:
            t = time.perf_counter()
            out = analysis.latency_gains(self.ws, self.backend, self.ranges, self.low, self.store)
            self._gains["low"] = (out, time.perf_counter() - t)
        return self._gains["low"]

    def formats(self, config, sensitivity: bool = True) -> tuple[dict, float]:
        """Every other precision's per-group sensitivity and profile (`format_options`), and
        what computing them cost."""
        from trt_mpq.pipeline.search import format_options

        if sensitivity not in self._formats:
            t = time.perf_counter()
            numbers = format_options(self.ws, self.backend, self.ranges, self.low, config,
                                     self.store, None, sensitivity)
            self._formats[sensitivity] = (numbers, time.perf_counter() - t)
        return self._formats[sensitivity]

    @functools.cached_property
    def edges(self) -> tuple:
        from trt_mpq.model.groups import group_edges

        return tuple(group_edges(self.ws.model, self.ws.groups))

    def boundary(self, config, accept, sens: dict | None) -> tuple[list, float]:
        """The boundary strategy as `trt-mpq search --strategy boundary` builds it, every
        precision each group's op supports an option (`sens` None: accuracy ignored, every
        sensitivity 0), and the cost of its profiles and per-precision sensitivities."""
        from trt_mpq.search import SearchInputs, strategy_spec

        gains, gains_s = self.gains()
        formats, formats_s = self.formats(config, sensitivity=sens is not None)
        sens = sens if sens is not None else {g: 0.0 for g in self.names}
        inputs = SearchInputs(
            groups=tuple(self.names), order=tuple(self.names), low=self.low, base=self.base,
            accept=accept, sensitivity=sens, gain=gains.gain, edges=self.edges,
            options={(g, p): (sens[g], gains.gain_ratio[g]) for g, p in self.low.items()}
            | formats)
        return strategy_spec("boundary").build(config.strategy_config, inputs), \
            gains_s + formats_s

    def final_measure(self):
        """The measurement `trt-mpq search` times its finalists with."""
        from trt_mpq.pipeline.config import SearchConfig
        from trt_mpq.pipeline.timing import final_measure

        return final_measure(self.evaluator.measure, SearchConfig.final_repeats_factor)

    def joint_order(self, finalists: list) -> list:
        """The finalists in the order of one fresh timing of them all, interleaved with FP32, as
        `trt-mpq search` orders its finalists before the holdout tries them (the search-time
        ratios are each the minimum of noisy ones: the winner's curse); stored per set."""
        from trt_mpq.pipeline.config import SearchConfig
        from trt_mpq.pipeline.timing import time_finalists
        from trt_mpq.search import Budget

        if len(finalists) < 2:
            return list(finalists)
        timed, _ = time_finalists(self.ws, self.backend, self.evaluator, list(finalists),
                                   self.final_measure(), SearchConfig(budget=Budget.parse("1%")),
                                   self.store, self.out)
        ratio = {d: lat.median_ms / base.median_ms for d, (lat, base, _) in timed.items()}
        return sorted(finalists, key=lambda e: (ratio[e.plan.digest], e.drop or 0.0))

    def certify(self, plan, budget) -> dict:
        """The plan's holdout drop, certified adaptively under the current budget's rule (ONNX
        Runtime, same graph and runtime as its evaluation): in budget, relative drop, its upper
        bound, samples used."""
        from trt_mpq.measure.sequential import IN, sequential_drop
        from trt_mpq.sensitivity.simulator import make_simulator

        key = f"certify:{plan.digest}:{budget.max_drop}:{budget.relative}:{CONFIDENCE}"
        if (cached := self.store.get_blob(key)) is not None:
            return cached
        task = self.ws.task
        sim = make_simulator(self.ws.model, self.ws.groups, self.ranges, self.backend.dialect,
                             task.eval_batch)
        seq = sequential_drop(task.metric, task.holdout, self.holdout_outputs,
                              lambda part: sim(plan, part), self.holdout_rule)
        out = {"in": seq.decision == IN, "drop": seq.bound.rel_drop,
               "upper": seq.bound.rel_upper, "samples": seq.samples, "n": len(task.holdout)}
        self.store.put_blob(key, out)
        return out


def run_method(r: Runner, method: str, budget, sens_cache: dict) -> dict:
    from trt_mpq.plan import Plan
    from trt_mpq.qdq import BASELINE
    from trt_mpq.search import (
        Around,
        Bisection,
        IlpSearch,
        PrefixPlans,
        PrefixSweep,
        drive,
    )
    from trt_mpq.sensitivity import ordering

    accept = r.use_budget(budget)
    base = BASELINE[r.backend.dialect]
    sens_s = 0.0

    def scores(metric: str):
        nonlocal sens_s
        if metric not in sens_cache:
            sens_cache[metric] = r.sensitivity(metric)
        sens_s += sens_cache[metric].seconds
        return sens_cache[metric].scores

    def bisect(order, extra=()):
        pp = PrefixPlans(order, {g: r.low[g] for g in order}, base)
        bis = Bisection(pp, accept)
        strategies = [bis, *[s(pp, bis) for s in extra]]
        return drive(strategies, r.evaluator.evaluate)

    if method == "uniform":
        evs = [r.evaluator.evaluate(Plan.of(r.low), "uniform")]
    elif method == "graph-order":
        evs = bisect(list(reversed(r.names)))  # lower from the end: the first N stay high
    elif method == "aimet":
        evs = bisect(ordering.order(r.names, scores("accuracy")))
    elif method == "hawq":
        evs = bisect(ordering.order(r.names, scores("hessian")))
    elif method == "deps":
        evs = bisect(ordering.order(r.names, scores("hessian+deps")))
    elif method == "ours-v1":
        gains, cost = r.gains()
        order = ordering.order(r.names, scores("hessian+deps"), gains.gain)
        evs = bisect(order, extra=(lambda pp, bis: Around(pp, lambda: bis.best_k, width=2),
                                   lambda pp, bis: PrefixSweep(pp, 6)))
        sens_s += cost
    elif method == "ours":
        return run_ours(r, accept, scores, budget, lambda: sens_s)
    elif method == "autoquantize":
        params = {g.name: g.params for g in r.ws.groups}
        ilp = IlpSearch(r.names, r.low, base, accept, objective="bits", params=params,
                        sensitivity={g: max(v, 0.0) for g, v in scores("fisher").items()},
                        steps=8)
        evs = drive([ilp], r.evaluator.evaluate)
    elif method == "random":
        per_seed = []
        for seed in range(5):
            order = list(r.names)
            random.Random(seed).shuffle(order)
            per_seed.append(bisect(order))
        return _median_of(r, per_seed, accept, budget)
    else:
        raise ValueError(method)
    return _summary(r, evs, accept, sens_s, budget)


def run_ours(r: Runner, accept, scores, budget, sensitivity_s) -> dict:
    """The boundary strategy as `trt-mpq search --strategy boundary` builds it: the default
    sensitivity metric, every precision each group's op supports as an option (one sensitivity
    run and one profile per precision), plans timed slower than the fastest in-budget one so far
    (or the baseline) skip their accuracy pass, as `trt-mpq search` gates them, and the
    strategy's safer plans are measured only if the holdout refuses every answer. Its cost: the
    sensitivity of every precision, the profiles and its evaluations."""
    from trt_mpq.pipeline.config import SearchConfig
    from trt_mpq.pipeline.gate import FastestInBudget
    from trt_mpq.search import Budget, drive

    config = SearchConfig(budget=Budget.parse("1%"), strategy="boundary")
    strategies, cost = r.boundary(config, accept, scores(config.sensitivity))  # sens: scores()
    fastest = FastestInBudget(accept, config.gate_margin, config.gate_recheck,
                              keep=config.confirm_candidates)

    def gated(plan, label):
        return r.evaluator.evaluate(plan, label, gate=fastest.gate())

    evs = drive(strategies, r.evaluator.evaluate, fastest.see, gated)
    out = _summary(r, evs, accept, sensitivity_s() + cost, budget)
    if out["answer"] is None and (reopened := [s for s in strategies if s.fall_back()]):
        evs += drive(reopened, r.evaluator.evaluate, fastest.see, gated)
        out = _summary(r, evs, accept, sensitivity_s() + cost, budget, skip=out["tried"])
    return out


def _summary(r: Runner, evs, accept, sens_s: float, budget, skip=()) -> dict:
    """The method's answer: like `trt-mpq search`, the fastest in-budget plan faster than the
    baseline whose holdout drop is certified within the budget (up to 3 tried, not those in
    `skip`: plans tried before, in the order of their joint re-timing), else none."""
    from trt_mpq.search import area_under_frontier, frontier, ranked_in_budget

    best, hold, tried = None, None, list(skip)
    finalists = [e for e in ranked_in_budget(evs, accept) if e.plan.groups_at(r.base)
                 != e.plan.groups and e.latency_ratio < 1.0 and e.plan.digest not in skip][:3]
    for e in r.joint_order(finalists):
        tried.append(e.plan.digest)
        cert = r.certify(e.plan, budget)
        if cert["in"]:
            best, hold = e, cert
            break
    if best is not None:
        r.answers[best.plan.digest] = best
    return {"ratio": best.latency_ratio if best else None,
            "answer": best.plan.digest if best else None, "tried": tried,
            "holdout_drop": hold["drop"] if hold else None,
            "holdout_upper": hold["upper"] if hold else None,
            "holdout_samples": hold["samples"] if hold else None,
            "holdout_n": hold["n"] if hold else None, "metric": r.metric,
            "search_samples": [e.samples for e in evs if e.samples is not None],
            "search_n": len(r.ws.task.search),
            "plan": best.plan.counts() if best else None,
            "evaluations": len(evs), "sensitivity_s": sens_s,
            "eval_wall": {e.plan.digest: e.wall_s for e in evs},
            "auf": area_under_frontier(frontier(evs), 0.05),
            "points": [(e.latency_ratio, e.rel_drop) for e in evs if e.ok]}


def _median_of(r: Runner, runs, accept, budget) -> dict:
    """Seed with the median answer; evaluations and area: medians over the seeds; wall: all of
    them (the method's cost is what it took to get the median, i.e. every seed's run / 5)."""
    sums = [_summary(r, evs, accept, 0.0, budget) for evs in runs]
    ratios = [s["ratio"] if s["ratio"] is not None else 1.0 for s in sums]
    mid = sorted(range(len(sums)), key=lambda i: ratios[i])[len(sums) // 2]
    out = dict(sums[mid])
    out["evaluations"] = statistics.median(s["evaluations"] for s in sums)
    out["auf"] = statistics.median(s["auf"] for s in sums)
    return out


def compare(name: str, cache: Path, runs: Path, repeats: int, methods,
            budgets=BUDGETS, metric: str = "auto") -> dict:
    from trt_mpq.errors import ConfigError
    from trt_mpq.pipeline.config import SearchConfig
    from trt_mpq.pipeline.judging import resolvable
    from trt_mpq.search import Budget
    from trt_mpq.search.latency_model import model_report, standard_error

    runners: dict[str, Runner] = {}
    sens_caches: dict[str, dict] = {}

    def runner(metric: str | None) -> Runner:
        key = metric or "own"
        if key not in runners:
            runners[key] = Runner(name, cache, runs / f"compare-{name}" / key, repeats, metric)
            sens_caches[key] = {}
        return runners[key]

    def metric_for(text: str) -> str | None:
        """The task's own metric where its holdout can certify the budget, else agreement
        (always agreement with `metric="agreement"`)."""
        if text == "0.01%" or metric == "agreement":
            return "agreement"
        r = runner(None)
        try:
            resolvable(r.ws.task, SearchConfig(budget=Budget.parse(text), confidence=CONFIDENCE),
                       r.holdout_metric)
            return None
        except ConfigError:
            return "agreement"

    t0 = time.perf_counter()
    rows: dict = {m: {} for m in methods}
    metrics: dict[str, str] = {}
    try:
        for text in budgets:
            metric = metric_for(text)
            r = runner(metric)
            metrics[text] = r.metric
            for method in methods:
                rows[method][text] = run_method(r, method, Budget.parse(text),
                                                sens_caches[metric or "own"])
                print(f"{name} {method} {text} ({r.metric}): "
                      f"{json.dumps(_short(rows[method][text]))}", file=sys.stderr, flush=True)
        own = runner(None)
        remeasure(own, runners, rows, runs / f"compare-{name}")
        quality = {}
        try:
            from trt_mpq.pipeline import analysis
            from trt_mpq.sensitivity import ordering

            sens_cache = sens_caches["own"]
            ref = analysis.reference_drop(own.ws, own.ranges, own.backend.dialect, own.low,
                                          own.store)
            orders = {m: dict(s.scores) for m, s in sens_cache.items()}  # ties stay ties
            if "hessian+deps" in sens_cache:
                orders["hessian+deps (latency-aware)"] = ordering.order(
                    own.names, sens_cache["hessian+deps"].scores, own.gains()[0].gain)
            quality = ordering.order_quality(orders, ref.scores)
        except Exception as e:  # the comparison stands without it
            quality = {"error": str(e)}
        # the latency models on every plan any method measured (all metrics' stores)
        gains = own.gains()[0]
        prior = {(g, p): gains.gain_ratio[g] for g, p in own.low.items()}
        for numbers, _ in own._formats.values():
            prior |= {o: v[1] for o, v in numbers.items()}
        measured = {e.plan.digest: (e.plan, e.latency_ratio, standard_error(e.ratio_ci))
                    for r in runners.values() for e in r.store.all()
                    if e.latency_ratio is not None}
        latency_model = model_report(own.names, own.edges, own.base, prior,
                                     list(measured.values()))
        latency_model.pop("points")
        shares = [e.samples / len(r.ws.task.search) for r in runners.values()
                  for e in r.store.all() if e.samples]
        result = {"model": name, "weights": own.ws.task.weights, "groups": len(own.names),
                  "baseline_metric": own.baseline_metric, "rows": rows, "metrics": metrics,
                  "budgets": list(budgets),
                  "baseline_metrics": {k: r.baseline_metric for k, r in runners.items()},
                  "sensitivity_cost": {m: {"seconds": s.seconds, "passes": s.passes}
                                       for m, s in sens_caches["own"].items()},
                  "order_quality": quality, "latency_model": latency_model,
                  # adaptive evaluation: the mean share of the search split an evaluation used
                  "mean_sample_share": statistics.mean(shares) if shares else None,
                  "wall_s": time.perf_counter() - t0,
                  "unique_evaluations": sum(len(r.store) for r in runners.values()),
                  "date": time.strftime("%Y-%m-%d")}
    finally:
        for r in runners.values():
            r.close()
    (runs / f"compare-{name}" / "compare.json").write_text(json.dumps(result, indent=1))
    plot(result, runs / f"compare-{name}" / "frontier.png")
    return result


def remeasure(own: Runner, runners: dict, rows: dict, out: Path) -> None:
    """Every method's answer at every budget timed again, all of them and FP32 together in one
    fresh interleaved measurement until each ratio's 95% interval is within +-1% (cap 120 s,
    as `trt-mpq search` times its finalists): cells compare ratios measured side by side, not
    the minimum of each method's noisy search-time measurements. Each row keeps its search-time
    ratio as `search_ratio`."""
    from trt_mpq.pipeline.config import SearchConfig
    from trt_mpq.pipeline.timing import time_finalists
    from trt_mpq.search import Budget

    answers = {d: e for r in runners.values() for d, e in r.answers.items()}
    if not answers:
        return
    config = SearchConfig(budget=Budget.parse("1%"))
    timed, precision = time_finalists(own.ws, own.backend, own.evaluator,
                                       list(answers.values()), own.final_measure(), config,
                                       own.store, out)
    for by_budget in rows.values():
        for row in by_budget.values():
            if row.get("answer") in timed:
                lat, base, ci = timed[row["answer"]]
                row["search_ratio"] = row["ratio"]
                row["ratio"] = lat.median_ms / base.median_ms
                row["ratio_ci"] = list(ci)
                row["final_timing"] = precision


def compare_latency(name: str, cache: Path, runs: Path, repeats: int, points: int = 6) -> dict:
    """Latency-only rows (random-weight models, whose metric means nothing): how fast each plan
    family gets, accuracy ignored. Uniform low; the fastest of `points` prefixes along the graph
    order (Polygraphy's family); the fastest of as many prefixes along the order by measured
    per-group latency gain alone (ours, with no sensitivity to weigh it against)."""
    from trt_mpq.plan import Plan
    from trt_mpq.search import PrefixPlans, PrefixSweep, drive
    from trt_mpq.sensitivity import ordering

    r = Runner(name, cache, runs / f"latency-{name}", repeats)
    t0 = time.perf_counter()
    try:
        def sweep(order):
            pp = PrefixPlans(order, {g: r.low[g] for g in order}, r.base)
            return drive([PrefixSweep(pp, points)], r.evaluator.evaluate)

        gains, gains_s = r.gains()
        families = {
            "uniform": [r.evaluator.evaluate(Plan.of(r.low), "uniform")],
            "graph-order sweep": sweep(list(reversed(r.names))),
            "latency-aware sweep": sweep(ordering.order(r.names, {g: 0.0 for g in r.names},
                                                        gains.gain)),
        }
        # several formats per group: each format alone (uniform where its op allows), and the
        # boundary strategy choosing per group among all of them, accuracy ignored
        from trt_mpq.pipeline.config import SearchConfig
        from trt_mpq.search import Budget

        config = SearchConfig(budget=Budget.parse("1%"), strategy="boundary")
        strategies, _ = r.boundary(config, lambda e: e.ok, None)
        formats, formats_s = r.formats(config, sensitivity=False)
        for p in sorted({p for _, p in formats}, key=lambda p: p.value):
            low = {g: (p if (g, p) in formats else r.low[g]) for g in r.names}
            families[f"uniform {p.value}"] = [r.evaluator.evaluate(Plan.of(low),
                                                                   f"uniform {p.value}")]
        families["boundary, all formats"] = drive(strategies, r.evaluator.evaluate)
        rows = {}
        for family, evs in families.items():
            ok = [e for e in evs if e.ok and e.latency_ratio is not None]
            best = min(ok, key=lambda e: e.latency_ratio) if ok else None
            rows[family] = {"ratio": best.latency_ratio if best else None,
                            "plan": best.plan.counts() if best else None,
                            "evaluations": len(evs),
                            "wall_s": sum(e.wall_s for e in evs)
                            + (gains_s if family.startswith(("latency", "boundary")) else 0.0)
                            + (formats_s if family.startswith("boundary") else 0.0)}
            print(f"{name} latency-only {family}: {json.dumps(_short(rows[family]))}",
                  file=sys.stderr, flush=True)
        result = {"model": name, "weights": r.ws.task.weights, "groups": len(r.names),
                  "latency_only": True, "baseline_ms": statistics.median(
                      e.baseline_latency.median_ms for evs in families.values() for e in evs
                      if e.baseline_latency is not None),
                  "rows": rows, "gains_s": gains_s, "wall_s": time.perf_counter() - t0,
                  "unique_evaluations": len(r.store), "date": time.strftime("%Y-%m-%d")}
    finally:
        r.close()
    (runs / f"latency-{name}" / "compare.json").write_text(json.dumps(result, indent=1))
    return result


def _short(row: dict) -> dict:
    return {k: row[k] for k in ("ratio", "holdout_drop", "holdout_upper", "holdout_samples",
                                "evaluations") if k in row}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method, by_budget in result["rows"].items():
        pts = sorted({p for row in by_budget.values() for p in row.get("points", [])
                      if p[0] is not None and p[1] is not None})
        if pts:
            ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=14, label=method)
    ax.set_xlabel("latency / FP32 latency (measured)")
    ax.set_ylabel("metric drop on the search split (%)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(f"{result['model']}: every plan each method measured")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: list[dict]) -> str:
    import onnxruntime
    from results_md import commit

    from trt_mpq.report import machine_info

    cpu = machine_info()["cpu"]
    lines = [f"Backend `ort-cpu` (ONNX Runtime {onnxruntime.__version__}), {cpu}; "
             f"run on {time.strftime('%Y-%m-%d')}, commit {commit()}, with `python "
             "benchmarks/compare_methods.py`. "
             "Each cell: latency ratio of the method's answer (its fastest in-budget measured plan "
             "faster than FP32 whose holdout drop is certified), re-measured with every other "
             "answer of the model and FP32 in one interleaved measurement, with its 95% "
             "interval / the 95% upper bound of that "
             "drop (relative) / the holdout samples that certified it; `-` = no quantized plan "
             "certified within budget. Every cell is certified.", ""]
    latency = [res for res in results if res.get("latency_only")]
    for res in [res for res in results if not res.get("latency_only")]:
        budgets = res.get("budgets", BUDGETS)
        lines += [f"### {res['model']} ({res['weights']} weights, {res['groups']} groups, "
                  f"baseline {res['baseline_metric']:.4f}; {res['unique_evaluations']} distinct "
                  "plans measured)", "",
                  "| method | " + " | ".join(
                      f"budget {b} ({res.get('metrics', {}).get(b, 'own metric')})"
                      for b in budgets) +
                  f" | evaluations ({' / '.join(budgets)}) | wall s | area under frontier |",
                  "|---|" + "---|" * (len(budgets) + 3)]
        for method, by_budget in res["rows"].items():
            cells = []
            for b in budgets:
                row = by_budget[b]
                if row["ratio"] is None:
                    cells.append("-")
                elif row.get("holdout_upper") is None:  # a result from before certification
                    cells.append(f"{row['ratio']:.3f} / {100 * row['holdout_drop']:+.2f}% "
                                 "(point estimate)")
                else:
                    ci = (f" ({row['ratio_ci'][0]:.3f}-{row['ratio_ci'][1]:.3f})"
                          if row.get("ratio_ci") else "")
                    cells.append(f"{row['ratio']:.3f}{ci} / <= {100 * row['holdout_upper']:+.2f}%"
                                 f" / {row['holdout_samples']}")
            evs = " / ".join(f"{by_budget[b]['evaluations']:g}" for b in budgets)
            # its sensitivity once, plus every distinct plan it needed at any budget
            walls = {d: w for b in budgets for d, w in by_budget[b]["eval_wall"].items()}
            wall = max(by_budget[b]["sensitivity_s"] for b in budgets) + sum(walls.values())
            auf = max(by_budget[b]["auf"] for b in budgets)
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {evs} | {wall:.0f} | "
                         f"{auf:.3f} |")
        q = res.get("order_quality", {})
        if q and "error" not in q:
            lines += ["", "Rank correlation of each order with the measured one-at-a-time drop "
                      "on the search split (Spearman / Kendall): " + "; ".join(
                          f"{m} {v['spearman']:+.2f} / {v['kendall']:+.2f}" for m, v in q.items()
                          if v["spearman"] is not None)]
        model = res.get("latency_model")
        if model and model.get("median_abs_error") is not None:
            lines += ["", f"Latency model on the {model['plans']} distinct plans measured "
                      f"(leave-one-out, % of FP32 latency): median error "
                      f"{100 * model['median_abs_error']:.1f}% with precision-boundary costs, "
                      f"{100 * model['additive_median_abs_error']:.1f}% additive (per-group "
                      "gains alone)."]
        if res.get("mean_sample_share") is not None:
            lines += ["", "Adaptive evaluation: an evaluation used "
                      f"{100 * res['mean_sample_share']:.0f}% of its search split on average."]
        cost = res.get("sensitivity_cost", {})
        if cost:
            lines += ["", "Sensitivity cost: " + "; ".join(
                f"{m} {c['seconds']:.1f} s ({c['passes']} passes)" for m, c in cost.items())]
        lines += ["", f"![{res['model']}](compare_{res['model']}.png)", ""]
    if latency:
        families = list(latency[0]["rows"])
        weights = ", ".join(f"{res['model']}: {res.get('weights', '?')}" for res in latency)
        lines += ["### Latency-only rows", "",
                  f"Weights as the zoo built them ({weights}): with random weights the metric "
                  "says nothing and no accuracy budget applies, so each cell is the latency "
                  "ratio of the fastest plan a family of plans reaches, accuracy ignored, with "
                  "its evaluations. *latency-aware sweep* orders groups by their measured "
                  "latency gain alone (ours without the sensitivity it would weigh against).",
                  "",
                  "| model | FP32 ms | " + " | ".join(families) + " | wall s |",
                  "|---|---|" + "---|" * (len(families) + 1)]
        for res in latency:
            cells = [("-" if (row := res["rows"][f])["ratio"] is None else
                      f"{row['ratio']:.3f} ({row['evaluations']} ev.; "
                      + ", ".join(f"{p} {n}" for p, n in row["plan"].items()) + ")")
                     for f in families]
            lines.append(f"| {res['model']} ({res['weights']}) | {res['baseline_ms']:.2f} | "
                         + " | ".join(cells) + f" | {res['wall_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _with_saved(results: list[dict], runs: Path, models, latency_models) -> list[dict]:
    """The default models' saved results (from earlier runs) for those not run now, in the
    default order; so the models can be run one invocation at a time."""
    now = {(r["model"], bool(r.get("latency_only"))): r for r in results}
    out = []
    for name, lat in [(m, False) for m in models] + [(m, True) for m in latency_models]:
        if (name, lat) in now:
            out.append(now.pop((name, lat)))
        elif (path := runs / f"{'latency' if lat else 'compare'}-{name}" / "compare.json").exists():
            out.append(json.loads(path.read_text()))
            print(f"{name}: saved result from {path}", file=sys.stderr)
    return out + list(now.values())


def write_results(text: str) -> Path:
    from results_md import write_section

    return write_section("compare_methods", "Method comparison", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet-digits", "mobilenetv2-digits",
                                                    "efficientnet-lite0", "minilm-sentiment"])
    ap.add_argument("--latency-models", nargs="*", default=["resnet50", "bert-base"],
                    help="latency-only rows (random-weight models)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS),
                    help="accuracy budgets (default: 1%% 0.1%% 0.01%%)")
    ap.add_argument("--metric", choices=["auto", "agreement"], default="auto",
                    help="auto: the task's own metric where its holdout can certify the "
                         "budget, else agreement (0.01%%: always agreement)")
    ap.add_argument("--fresh-table", action="store_true",
                    help="table only the models run now (default: also the default models' "
                         "saved results from earlier runs under --runs)")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from trt_mpq.task import default_cache_dir

    cache = args.cache or default_cache_dir()
    results = [compare(m, cache, args.runs, args.repeats, args.methods, tuple(args.budgets),
                       args.metric) for m in args.models]
    results += [compare_latency(m, cache, args.runs, args.repeats) for m in args.latency_models]
    if not args.fresh_table:
        results = _with_saved(results, args.runs, ap.get_default("models"),
                              ap.get_default("latency_models"))
    text = table(results)
    print(text)
    if not args.no_write:
        import shutil

        for res in [r for r in results if not r.get("latency_only")]:
            shutil.copy(args.runs / f"compare-{res['model']}" / "frontier.png",
                        HERE / f"compare_{res['model']}.png")
        print(f"wrote {write_results(text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

