"""Greedy forward selection and the ILP search against fake evaluators with a known optimum."""

import itertools
import math
import random

import pytest

from trt_mpq.measure import LatencyStats
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.search import Evaluation, Status, drive
from trt_mpq.search import ilp as ilp_module
from trt_mpq.search.greedy import Greedy, greedy_evaluations
from trt_mpq.search.ilp import IlpSearch, plan_bits, solve_binary


def groups(n):
    return [f"/layer{i}/conv" for i in range(n)]


def fake(names, drop, saving, low, pair=None, fail=()):
    """Additive fake: lowering group g adds drop[g] to the metric drop and takes saving[g] off the
    latency ratio; `pair` adds an interaction {(g, h): (extra drop, extra saving)}; plans lowering
    a group of `fail` fail to build. Returns (evaluate, calls: list of evaluated digests)."""
    calls = []

    def evaluate(plan: Plan, label: str) -> Evaluation:
        calls.append(plan.digest)
        lowered = {g for g in names if plan[g] is low[g]}
        if lowered & set(fail):
            return Evaluation(plan=plan, status=Status.BUILD_FAILED, reason="x", label=label)
        d = sum(drop[g] for g in lowered)
        r = 1.0 - sum(saving[g] for g in lowered)
        for (g, h), (dd, ds) in (pair or {}).items():
            if g in lowered and h in lowered:
                d, r = d + dd, r - ds
        base = LatencyStats.of([1e-3] * 3)
        return Evaluation(plan=plan, status=Status.OK, label=label, metric=0.9 - d, drop=d,
                          rel_drop=d / 0.9, latency=LatencyStats.of([r * 1e-3] * 3),
                          baseline_latency=base, latency_ratio=r)

    return evaluate, calls


def accept_for(max_drop):
    return lambda e: e.ok and e.drop is not None and e.drop <= max_drop + 1e-12


def brute_force(names, low, base, evaluate, accept):
    """The fastest in-budget plan over all 2^n plans (latency_ratio)."""
    best = None
    for bits in itertools.product((0, 1), repeat=len(names)):
        plan = Plan.of({g: (low[g] if b else base) for g, b in zip(names, bits)})
        e = evaluate(plan, "brute")
        if accept(e) and (best is None or e.latency_ratio < best.latency_ratio):
            best = e
    return best


def random_problem(seed, n):
    rng = random.Random(seed)
    names = groups(n)
    drop = {g: rng.uniform(0.001, 0.02) for g in names}
    saving = {g: rng.uniform(0.01, 0.1) for g in names}
    return rng, names, drop, saving


# -- Greedy --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_greedy_finds_the_optimum_on_an_additive_fake(seed):
    # budget = a prefix of the groups sorted by saving/drop: the LP relaxation's optimum is then
    # integral, so the integer optimum is that prefix and the ratio rule must find it
    rng, names, drop, saving = random_problem(seed, 6)
    low = {g: P.INT8 for g in names}
    by_ratio = sorted(names, key=lambda g: -saving[g] / drop[g])
    k = rng.randint(1, 5)
    max_drop = sum(drop[g] for g in by_ratio[:k])
    accept = accept_for(max_drop)
    evaluate, calls = fake(names, drop, saving, low)
    optimum = brute_force(names, low, P.FP32, evaluate, accept)
    calls.clear()

    greedy = Greedy(names, low, P.FP32, accept, eps=1e-9)
    evs = drive([greedy], evaluate)
    assert greedy.best is not None and accept(greedy.best)
    assert greedy.best.latency_ratio == pytest.approx(optimum.latency_ratio, abs=1e-12)
    assert set(greedy.lowered) == set(by_ratio[:k])
    assert evs[0].plan == Plan.uniform(names, P.FP32) and evs[0].label == "greedy base"
    assert greedy.evaluations == len(calls) == len(set(calls)) == len(evs)
    assert greedy.evaluations == greedy_evaluations(6, len(greedy.lowered))
    assert greedy.history[0][1].label.startswith("greedy step 1: +/layer")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("candidates", [None, 2])
def test_greedy_invariants_on_a_non_additive_fake(seed, candidates):
    rng, names, drop, saving = random_problem(100 + seed, 6)
    low = {g: (P.INT8 if i % 2 else P.FP16) for i, g in enumerate(names)}
    pair = {(names[0], names[1]): (0.01, -0.05), (names[2], names[4]): (-0.004, 0.03)}
    max_drop = rng.uniform(0.01, 0.04)
    accept = accept_for(max_drop)
    evaluate, calls = fake(names, drop, saving, low, pair=pair)
    optimum = brute_force(names, low, P.FP32, evaluate, accept)
    calls.clear()

    order = sorted(names, key=lambda g: drop[g])
    greedy = Greedy(names, low, P.FP32, accept, candidates=candidates, order=order)
    evs = drive([greedy], evaluate)
    assert greedy.best is not None and accept(greedy.best)
    # its answer is the fastest in-budget plan it measured, and no faster than the optimum
    assert greedy.best.latency_ratio == min(e.latency_ratio for e in evs if accept(e))
    assert greedy.best.latency_ratio >= optimum.latency_ratio - 1e-12
    assert len(calls) == len(set(calls)) == greedy.evaluations == len(evs)
    assert greedy.evaluations == greedy_evaluations(6, len(greedy.lowered), candidates)
    assert greedy.evaluations <= 1 + 6 * 7 // 2
    # every committed plan is in budget and lowers exactly one more group
    for i, (_g, e) in enumerate(greedy.history):
        assert accept(e) and len([h for h in names if e.plan[h] is low[h]]) == i + 1
    # with candidates, only the least sensitive remaining groups were tried at each step
    if candidates:
        for e in evs[1:]:
            step = int(e.label.split()[2].rstrip(":"))
            added = e.label.split("+", 1)[1]
            before = greedy.lowered[:step - 1]
            assert added in [g for g in order if g not in before][:candidates]


def test_greedy_count_formula_worst_case_and_start():
    names = groups(5)
    low = {g: P.INT8 for g in names}
    drop = {g: 0.001 for g in names}
    saving = {g: 0.01 * (i + 1) for i, g in enumerate(names)}
    evaluate, calls = fake(names, drop, saving, low)
    base_eval = evaluate(Plan.uniform(names, P.FP32), "known")
    calls.clear()
    greedy = Greedy(names, low, P.FP32, accept_for(1.0), start=base_eval)
    drive([greedy], evaluate)
    assert greedy.lowered == list(reversed(names))  # largest saving first (equal drops)
    assert greedy.evaluations == len(calls) == 5 * 6 // 2 == greedy_evaluations(5, 5, None, False)
    assert greedy_evaluations(5, 5) == 16 and greedy_evaluations(5, 0) == 6
    assert greedy_evaluations(5, 2, candidates=2) == 1 + 2 + 2 + 2
    with pytest.raises(ValueError):
        Greedy(names, low, P.FP32, accept_for(1.0), start=evaluate(Plan.uniform(names, P.INT8), ""))


def test_greedy_skips_failures_and_stops_when_nothing_fits():
    names = groups(4)
    low = {g: P.INT8 for g in names}
    drop = {names[0]: 0.001, names[1]: 0.001, names[2]: 0.5, names[3]: 0.001}
    saving = {names[0]: 0.1, names[1]: 0.2, names[2]: 0.3, names[3]: 0.4}
    evaluate, calls = fake(names, drop, saving, low, fail={names[3]})
    greedy = Greedy(names, low, P.FP32, accept_for(0.01))
    drive([greedy], evaluate)
    assert greedy.lowered == [names[1], names[0]]  # names[3] fails to build, names[2] too costly
    assert greedy.best.latency_ratio == pytest.approx(0.7)
    # batches of 4, 3 and 2 candidates (the last finds nothing in budget), plus the base
    assert greedy.evaluations == greedy_evaluations(4, 2) == 1 + 4 + 3 + 2


def test_greedy_refuses_unasked_plans():
    names = groups(3)
    low = {g: P.INT8 for g in names}
    evaluate, _ = fake(names, {g: 0.0 for g in names}, {g: 0.1 for g in names}, low)
    greedy = Greedy(names, low, P.FP32, accept_for(1.0))
    [(base_plan, _)] = greedy.ask()
    with pytest.raises(ValueError):
        greedy.tell(Plan.uniform(names, P.INT8), evaluate(Plan.uniform(names, P.INT8), ""))
    greedy.tell(base_plan, evaluate(base_plan, ""))
    batch = greedy.ask()
    assert len(batch) == 3
    greedy.tell(batch[0][0], evaluate(batch[0][0], ""))
    with pytest.raises(ValueError):  # told twice
        greedy.tell(batch[0][0], evaluate(batch[0][0], ""))
    assert greedy.ask() == batch[1:]  # the rest of the batch is still asked for


# -- the solver ----------------------------------------------------------------------------------

def brute_binary(objective, row, lower, upper, maximize):
    best = None
    for x in itertools.product((0, 1), repeat=len(objective)):
        s = sum(a * xi for a, xi in zip(row, x))
        if lower <= s <= upper:
            v = sum(c * xi for c, xi in zip(objective, x))
            if best is None or (v > best if maximize else v < best):
                best = v
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_matches_brute_force_knapsacks(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    scale = 10 ** rng.randint(-6, 6)  # HiGHS's tolerances are absolute: the solver rescales
    value = [rng.uniform(0, 1) * scale for _ in range(n)]
    weight = [rng.uniform(0, 1) * scale for _ in range(n)]
    cap = rng.uniform(0, sum(weight))
    x = solve_binary(value, weight, upper=cap, maximize=True)
    assert x is not None and set(x) <= {0, 1}
    assert sum(w * xi for w, xi in zip(weight, x)) <= cap * (1 + 1e-9)
    got = sum(v * xi for v, xi in zip(value, x))
    assert got == pytest.approx(brute_binary(value, weight, -math.inf, cap, True),
                                rel=1e-6, abs=1e-6 * max(value))
    # the bits form: minimize cost subject to a covering constraint
    need = rng.uniform(0, sum(weight))
    x = solve_binary(value, weight, lower=need)
    assert x is not None and sum(w * xi for w, xi in zip(weight, x)) >= need * (1 - 1e-9)
    got = sum(v * xi for v, xi in zip(value, x))
    assert got == pytest.approx(brute_binary(value, weight, need, math.inf, False),
                                rel=1e-6, abs=1e-6 * max(value))


def test_solver_failures_are_none():
    assert solve_binary([1, 2], [1, 1], lower=3) is None  # infeasible
    assert solve_binary([], [], upper=1) == () and solve_binary([], [], lower=1) is None
    with pytest.raises(ValueError):
        solve_binary([1], [1, 2])


# -- IlpSearch -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("steps", [3, 24])
def test_ilp_finds_the_optimum_when_sensitivities_are_the_drops(seed, steps):
    rng, names, drop, saving = random_problem(200 + seed, 8)
    low = {g: P.INT8 for g in names}
    max_drop = rng.uniform(0.05, 0.6) * sum(drop.values())
    accept = accept_for(max_drop)
    evaluate, calls = fake(names, drop, saving, low)
    optimum = brute_force(names, low, P.FP32, evaluate, accept)
    calls.clear()

    ilp = IlpSearch(names, low, P.FP32, accept, sensitivity=drop, gain=saving, steps=steps)
    evs = drive([ilp], evaluate)
    assert evs[0].plan == Plan.uniform(names, P.INT8)  # everything lowered first
    assert evs[0].label == f"ilp T={sum(drop.values()):.4g}"
    assert ilp.evaluations == len(calls) == len(set(calls)) <= steps + 1
    assert ilp.best is not None and accept(ilp.best)
    if steps == 24:
        assert ilp.best.latency_ratio == pytest.approx(optimum.latency_ratio, abs=1e-9)
        assert ilp.evaluations < 24  # stopped because the interval closed, not by the cap
    for t, plan, _ok in ilp.trace:  # every plan respects its T
        assert sum(drop[g] for g in names if plan[g] is P.INT8) <= t * (1 + 1e-6)


def test_ilp_stops_at_once_when_everything_fits():
    names = groups(4)
    low = {g: P.INT8 for g in names}
    drop = {g: 0.001 for g in names}
    evaluate, calls = fake(names, drop, {g: 0.1 for g in names}, low)
    ilp = IlpSearch(names, low, P.FP32, accept_for(0.01), sensitivity=drop, gain=drop)
    drive([ilp], evaluate)
    assert len(calls) == ilp.evaluations == 1 and ilp.best.plan == Plan.uniform(names, P.INT8)


def test_ilp_solver_failures_count_as_out_of_budget(monkeypatch):
    rng, names, drop, saving = random_problem(7, 6)
    low = {g: P.INT8 for g in names}
    real = ilp_module.solve_binary
    tries = []

    def flaky(*args, **kw):
        tries.append(kw.get("upper"))
        return None if len(tries) % 2 else real(*args, **kw)

    monkeypatch.setattr(ilp_module, "solve_binary", flaky)
    evaluate, calls = fake(names, drop, saving, low)
    ilp = IlpSearch(names, low, P.FP32, accept_for(0.3 * sum(drop.values())),
                    sensitivity=drop, gain=saving, steps=10)
    drive([ilp], evaluate)
    assert ilp.solver_failures == (len(tries) + 1) // 2 > 0
    assert len(calls) == len(set(calls)) == ilp.evaluations <= 11


@pytest.mark.parametrize("seed", range(6))
def test_ilp_bits_mode_respects_the_bit_budget(seed):
    rng, names, drop, saving = random_problem(300 + seed, 7)
    low = {g: (P.INT4_WEIGHT if i % 3 == 0 else P.INT8) for i, g in enumerate(names)}
    params = {g: rng.randint(1_000, 500_000) for g in names}
    max_drop = rng.uniform(0.1, 0.6) * sum(drop.values())
    accept = accept_for(max_drop)
    evaluate, calls = fake(names, drop, saving, low)
    # the known answer: the fewest bits of any in-budget plan
    fewest = min(plan_bits(p, params) for p in (
        Plan.of({g: (low[g] if b else P.FP16) for g, b in zip(names, bits)})
        for bits in itertools.product((0, 1), repeat=len(names)))
        if accept(evaluate(p, "")))
    calls.clear()

    ilp = IlpSearch(names, low, P.FP16, accept, sensitivity=drop, objective="bits",
                    params=params, steps=30)
    evs = drive([ilp], evaluate)
    assert evs[0].plan == Plan.of(low) and evs[0].label.startswith("ilp-bits B=")
    assert ilp.evaluations == len(calls) == len(set(calls)) <= 31
    for b, plan, _ok in ilp.trace:
        assert plan_bits(plan, params) <= b + 1e-6 * ilp.base_bits
    assert ilp.best is not None and accept(ilp.best)
    in_budget = [e for e in evs if accept(e)]
    assert min(plan_bits(e.plan, params) for e in in_budget) == fewest


def test_ilp_validates_and_refuses_unasked_plans():
    names = groups(3)
    low = {g: P.INT8 for g in names}
    sens = {g: 1.0 for g in names}
    with pytest.raises(ValueError):
        IlpSearch(names, low, P.FP32, accept_for(1), sensitivity=sens)  # no gain
    with pytest.raises(ValueError):
        IlpSearch(names, low, P.FP32, accept_for(1), sensitivity=sens, objective="bits")
    with pytest.raises(ValueError):
        IlpSearch(names, low, P.FP32, accept_for(1), sensitivity={**sens, names[0]: -1.0},
                  gain=sens)
    with pytest.raises(ValueError):
        IlpSearch(names, low, P.FP32, accept_for(1), sensitivity=sens, gain=sens, objective="x")
    ilp = IlpSearch(names, low, P.FP32, accept_for(1), sensitivity=sens, gain=sens)
    [(plan, label)] = ilp.ask()
    assert label == "ilp T=3"
    with pytest.raises(ValueError):
        ilp.tell(Plan.uniform(names, P.FP32), None)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth", [1, 2])
def test_speculative_ilp_follows_the_same_path_in_fewer_rounds(seed, depth):
    """With the next steps' plans speculated in each batch (alternative solutions of the
    program, either way each plan goes), the rule settles the same (T, plan, in budget) trace
    and best plan as one plan at a time, having measured every plan that one did, in fewer
    rounds; batched or not, the same plans."""
    rng, names, drop, saving = random_problem(300 + seed, 9)
    low = {g: P.INT8 for g in names}
    accept = accept_for(rng.uniform(0.05, 0.5) * sum(drop.values()))

    def run(d: int, batched: bool):
        evaluate, calls = fake(names, drop, saving, low)
        ilp = IlpSearch(names, low, P.FP32, accept, sensitivity=drop, gain=saving, steps=6,
                        speculate=d)
        rounds = []

        def batch(proposals, latency_first):
            rounds.append(len(proposals))
            return [evaluate(p, label) for p, label in proposals]

        drive([ilp], evaluate, evaluate_batch=batch if batched else None)
        return ilp, calls, rounds

    plain, plain_calls, plain_rounds = run(0, True)
    spec, spec_calls, rounds = run(depth, True)
    assert spec.trace == plain.trace and spec.evaluations == plain.evaluations
    assert spec.best.plan == plain.best.plan
    assert set(plain_calls) <= set(spec_calls) and len(spec_calls) == len(set(spec_calls))
    assert len(rounds) <= len(plain_rounds)
    if len(plain_rounds) > depth + 1:
        assert len(rounds) < len(plain_rounds)
    assert sorted(run(depth, False)[1]) == sorted(spec_calls)
