"""The boundary-aware search (issue 14): the group graph, the latency model with boundary costs,
the exact integer program, and the strategy against a fake evaluator whose latency has
boundary costs."""

import itertools
import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_mpq.graph import GRAPH_INPUT, GRAPH_OUTPUT, Edge
from trt_mpq.model.groups import find_groups, group_edges
from trt_mpq.plan import Plan, Precision
from trt_mpq.plan.precision import edge_type
from trt_mpq.results import Evaluation, Status
from trt_mpq.search import Bisection, BudgetAccept, PrefixPlans, drive
from trt_mpq.search.boundary import BoundarySearch, solve_program
from trt_mpq.search.latency_model import LatencyModel

F32, I8, DYN, I4 = Precision.FP32, Precision.INT8, Precision.INT8_DYNAMIC, Precision.INT4_WEIGHT


# -- the group graph -------------------------------------------------------------------------------
def _residual_attention_model() -> onnx.ModelProto:
    """conv a -> relu -> conv b -> add(skip from a's relu) -> relu -> flatten -> matmul q|k
    (one group: both read the same tensor) -> q x k^T (activation x activation) -> matmul o."""
    w = lambda name, shape: numpy_helper.from_array(  # noqa: E731
        np.random.default_rng(0).normal(size=shape).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "ra"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["rs"], name="relu_s"),
        helper.make_node("Flatten", ["rs"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["f", "wk"], ["k"], name="mm_k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
        helper.make_node("MatMul", ["qk", "wo"], ["y"], name="mm_o"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w("wa", (2, 2, 3, 3)), w("wb", (2, 2, 3, 3)), w("wq", (32, 8)), w("wk", (32, 8)),
         w("wo", (1, 4))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_group_edges_follow_glue_and_stop_at_groups():
    model = _residual_attention_model()
    groups = find_groups(model)
    assert [g.name for g in groups] == ["conv_a", "conv_b", "mm_q", "mm_o"]
    edges = {(e.src, e.dst): e.elements for e in group_edges(model, groups)}
    # the skip path conv_a -> relu -> add -> relu -> flatten reaches the q|k group too; the
    # attention product q x k^T is not a join (both sides come from one group)
    assert set(edges) == {(GRAPH_INPUT, "conv_a"), ("conv_a", "conv_b"), ("conv_a", "mm_q"),
                          ("conv_b", "mm_q"), ("mm_q", "mm_o"), ("mm_o", GRAPH_OUTPUT)}
    assert edges[(GRAPH_INPUT, "conv_a")] == 2 * 4 * 4
    assert edges[("conv_a", "conv_b")] == 2 * 4 * 4
    assert edges[("conv_b", "mm_q")] == 32


def test_edge_types_split_static_int8_from_float_in_float_out_formats():
    assert edge_type(I8, F32) == "int8"
    assert edge_type(DYN, F32) == edge_type(I4, F32) == edge_type(F32, F32) == "fp32"
    assert edge_type(I4, Precision.FP16) == "fp16"


# -- the latency model -----------------------------------------------------------------------------
def _chain(n: int) -> tuple[list[str], list[Edge]]:
    names = [f"g{i}" for i in range(n)]
    ends = [GRAPH_INPUT, *names, GRAPH_OUTPUT]
    return names, [Edge(a, b, 100 * (i + 1)) for i, (a, b) in enumerate(zip(ends, ends[1:]))]


def _truth(model: LatencyModel, gain: dict, c_edge: float, c_size: float):
    def ratio(plan: Plan) -> float:
        lowered, count, size = model.features(plan)
        return 1.0 - sum(gain[o] for o in lowered) + c_edge * count + c_size * size
    return ratio


def test_latency_model_recovers_known_gains_and_boundary_costs():
    rng = random.Random(1)
    names, edges = _chain(8)
    true_gain = {(g, I8): rng.uniform(-0.01, 0.08) for g in names}
    prior = {o: v * rng.uniform(0.6, 1.4) for o, v in true_gain.items()}  # a profiler's error
    model = LatencyModel(names, edges, F32, prior, noise_sd=0.002)
    truth = _truth(model, true_gain, c_edge=0.03, c_size=0.01)
    plans = [Plan.of({g: I8 if rng.random() < 0.5 else F32 for g in names}) for _ in range(60)]
    data = [(p, truth(p) + np.random.default_rng(i).normal(0, 0.001)) for i, p in enumerate(plans)]
    fit = model.fit(data)
    assert fit.c_edge == pytest.approx(0.03, abs=0.006)
    assert fit.c_size == pytest.approx(0.01, abs=0.006)
    for o, v in true_gain.items():
        assert fit.gain[o] == pytest.approx(v, abs=0.006)
    # the additive model (same data, no boundary term) cannot explain boundaries
    additive = LatencyModel(names, edges, F32, prior, noise_sd=0.002, boundaries=False)
    loo = [abs(e) for e in model.loo_errors(data[:30])]
    loo_add = [abs(e) for e in additive.loo_errors(data[:30])]
    assert np.median(loo) < 0.005 < np.median(loo_add)


def test_latency_model_without_measurements_is_the_profilers_additive_model():
    names, edges = _chain(3)
    prior = {("g0", I8): 0.1, ("g1", I8): 0.2, ("g2", I8): -0.05}
    model = LatencyModel(names, edges, F32, prior)
    plan = Plan.of({"g0": I8, "g1": F32, "g2": I8})
    assert model.predict(plan) == pytest.approx(1 - 0.1 + 0.05)
    assert model.features(plan)[1] == 4  # in->g0 (float->int8), g0->g1, g1->g2, g2->out
    with pytest.raises(ValueError, match="no gain"):
        model.predict(Plan.of({"g0": DYN, "g1": F32, "g2": F32}))


# -- the integer program ---------------------------------------------------------------------------
def _all_plans(names, options):
    per = [[F32] + [p for (g2, p) in options if g2 == g] for g in names]
    for combo in itertools.product(*per):
        yield Plan.of(dict(zip(names, combo)))


@pytest.mark.parametrize("seed", range(6))
def test_program_is_exact_against_brute_force_with_several_formats(seed):
    rng = random.Random(seed)
    names, edges = _chain(6)
    edges += [Edge("g0", "g3", 50), Edge("g2", "g5", 300)]  # a skip and a join
    options = [(g, I8) for g in names] + [(g, DYN) for g in names if rng.random() < 0.6] + \
        [(g, I4) for g in names if rng.random() < 0.3]
    prior = {o: rng.uniform(-0.02, 0.1) for o in options}
    model = LatencyModel(names, edges, F32, prior)
    model.fit([])
    model.fit_ = type(model.fit_)(dict(prior), c_edge=rng.uniform(0, 0.05),
                                  c_size=rng.uniform(0, 0.03), measurements=0)
    sens = {o: rng.choice([0.0, rng.uniform(0, 1)]) for o in options}
    t = rng.uniform(0.2, 2.0)
    got = solve_program(model, sens, t)
    feasible = [p for p in _all_plans(names, options)
                if sum(sens[(g, p[g])] for g in names if p[g] is not F32) <= t + 1e-12]
    best = min(model.predict(p) for p in feasible)
    assert got is not None and got in feasible
    assert model.predict(got) == pytest.approx(best, abs=1e-4)
    # excluding the optimum gives the next best
    second = solve_program(model, sens, t, exclude=[got])
    rest = [p for p in feasible if p != got]
    if rest:
        assert second is not None and second != got
        assert model.predict(second) == pytest.approx(min(model.predict(p) for p in rest),
                                                      abs=1e-4)


# -- the strategy against a fake evaluator ---------------------------------------------------------
class FakeEvaluator:
    """Latency: known per-group gains plus a boundary cost per switch along a chain; accuracy
    drop: the sum of the lowered groups' true sensitivities."""

    def __init__(self, names, edges, gain, sens, c_edge):
        self.model = LatencyModel(names, edges, F32, gain)
        self.truth = _truth(self.model, gain, c_edge, 0.0)
        self.sens = sens
        self.calls = 0

    def drop(self, plan):
        return sum(self.sens[(g, plan[g])] for g in plan.groups if plan[g] is not F32)

    def __call__(self, plan: Plan, label: str = "") -> Evaluation:
        self.calls += 1
        d = self.drop(plan)
        return Evaluation(plan=plan, status=Status.OK, label=label, metric=1 - d, drop=d,
                          rel_drop=d, latency_ratio=self.truth(plan))


def test_strategy_finds_the_region_plan_prefix_plans_cannot_reach():
    """Eight groups in a chain, each worth 0.05 lowered, each switch costing 0.06. The budget
    allows lowering six groups, but the two least sensitive ones sit at the chain's ends, so every
    in-budget prefix of the sensitivity order makes islands; the optimum is one contiguous
    region of the middle groups."""
    names, edges = _chain(8)
    gain = {(g, I8): 0.05 for g in names}
    true_sens = dict(zip(names, [0.001, 0.3, 0.1, 0.1, 0.1, 0.1, 0.3, 0.002]))
    sens = {(g, I8): v for g, v in true_sens.items()}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.06)
    budget = 0.45
    accept = lambda e, budget=budget: e.ok and e.drop <= budget  # noqa: E731
    feasible = [p for p in _all_plans(names, list(gain)) if fake.drop(p) <= budget]
    optimum = min(feasible, key=fake.truth)
    assert optimum.groups_at(I8) == tuple(names[2:6])  # one region, no island at the ends

    # what prefix plans along the sensitivity order reach
    order = sorted(names, key=lambda g: true_sens[g])
    prefixes = PrefixPlans(order, {g: I8 for g in names}, F32)
    best_prefix = min((prefixes.plan(k) for k in range(9) if fake.drop(prefixes.plan(k)) <= budget),
                      key=fake.truth)
    assert fake.truth(best_prefix) > fake.truth(optimum) + 0.05

    # the strategy starts from a profiler that knows the gains roughly and no boundary cost
    prior = {o: v * f for (o, v), f in zip(gain.items(), [1.3, 0.8, 1.1, 0.9, 1.2, 0.7, 1.0, 1.1])}
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=prior, max_evaluations=12)
    evs = drive([search], fake)
    assert search.best is not None and search.best.plan == optimum
    assert len(evs) <= 12
    # at half the sensitivity budget no plan is predicted faster than FP32 here (two lowered
    # groups do not pay for their two boundaries): should the holdout refuse the answer, no
    # fallback is measured
    assert search.fall_back() and not drive([search], fake)
    assert search.model.fit_.c_edge == pytest.approx(0.06, abs=0.02)  # learned from measurements
    report = search.report()
    assert len(report["predictions"]) == len(evs)
    assert report["median_abs_error"] < report["additive_median_abs_error"]

    # bisection along the same order does no better than the best prefix
    bis = Bisection(prefixes, accept)
    drive([bis], fake)
    assert fake.truth(prefixes.plan(bis.best_k)) >= fake.truth(best_prefix) - 1e-12


def test_strategy_keeps_a_group_float_that_is_slower_lowered():
    """Everything lowered is in budget, but one group is slower in int8 (resnet-digits' layer4
    conv on this CPU): the answer leaves it float, which a prefix of a sensitivity order that
    ranks it first never does."""
    names, edges = _chain(6)
    gain = {(g, I8): 0.08 for g in names}
    gain[("g5", I8)] = -0.2
    sens = {(g, I8): 0.01 for g in names}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.01)
    accept = lambda e: e.ok and e.drop <= 1.0  # noqa: E731
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=gain, max_evaluations=12)
    evs = drive([search], fake)
    assert search.best.plan.groups_at(F32) == ("g5",)
    assert not [e for e in evs if "fallback" in e.label]  # no accuracy boundary: none needed


def test_probes_are_latency_first_and_failures_count_out_of_budget():
    names, edges = _chain(5)
    gain = {(g, I8): 0.05 for g in names}
    sens = {(g, I8): 0.1 * (i + 1) for i, g in enumerate(names)}
    accept = lambda e: e.ok and e.drop <= 0.35  # noqa: E731
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=gain, max_evaluations=7)
    seen = []

    def evaluate(plan, label):
        seen.append((label, search.latency_first))
        if plan == Plan.of({g: I8 for g in names}):
            return Evaluation(plan=plan, status=Status.BUILD_FAILED, label=label, reason="build")
        d = sum(sens[(g, I8)] for g in names if plan[g] is I8)
        return Evaluation(plan=plan, status=Status.OK, label=label, metric=1 - d, drop=d,
                          rel_drop=d, latency_ratio=1 - 0.05 * len(plan.groups_at(I8)))

    evs = drive([search], evaluate)
    assert search.fall_back()  # the holdout refused every answer
    evs += drive([search], evaluate)
    assert [lf for label, lf in seen if "probe" in label] == [True, True]
    # the bisection's and the refit's plans are latency-first too; the all-lowered plan and
    # the fallbacks (the holdout's plans to fall back on) always get their accuracy pass
    assert all(lf for label, lf in seen if label.startswith(("boundary t=", "boundary refit")))
    firm = [lf for label, lf in seen
            if label.startswith(("boundary all-lowered", "boundary fallback"))]
    assert len(firm) >= 2 and not any(firm)
    assert any(label.startswith("boundary t=") for label, _ in seen)
    assert len(evs) <= 7
    assert search.best is not None and search.best.drop <= 0.35


def test_a_step_timed_slower_than_the_best_skips_accuracy_and_moves_t_up():
    """A t step whose plan the gated evaluation times slower than the fastest in-budget plan
    has no accuracy: the search settles it like a plan predicted slower (t up, toward more
    lowered plans), never as out of budget (t down, toward plans that keep more groups float
    and are slower still). Here the first step's plan is timed slow (a noisy moment): the next
    step's t is larger; had that plan measured out of budget, it would be smaller."""
    names, edges = _chain(8)
    gain = {(g, I8): 0.05 for g in names}
    sens = {(g, I8): 0.01 * (i + 1) for i, g in enumerate(names)}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    accept = lambda e: e.ok and e.drop <= 0.2  # noqa: E731

    def run(first_step):
        firsts = []

        def evaluate(plan, label):
            e = fake(plan, label)
            if label.startswith("boundary t=") and not firsts:
                firsts.append(label)
                return first_step(e)
            return e

        search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                                sensitivity=sens, prior_gain=gain, max_evaluations=12,
                                fallbacks=0)
        evs = drive([search], evaluate)
        ts = [float(e.label.split("t=")[1]) for e in evs if e.label.startswith("boundary t=")]
        return search, evs, ts

    slow = lambda e: Evaluation(plan=e.plan, status=Status.SLOWER, label=e.label,  # noqa: E731
                                latency_ratio=2.0)
    search, evs, ts = run(slow)
    assert search.gated == 1 and search.report()["gated"] == 1
    assert len(ts) >= 2 and ts[1] > ts[0]
    assert search.best is not None and accept(search.best)

    out = lambda e: Evaluation(**{**e.__dict__, "drop": 1.0, "rel_drop": 1.0})  # noqa: E731
    search, evs, ts = run(out)
    assert search.gated == 0 and len(ts) >= 2 and ts[1] < ts[0]


def test_polish_finds_faster_plans_where_sensitivity_estimates_are_off():
    """Random problems whose true drops are the sensitivity estimates plus noise (resnet-digits
    at 0.1%: a plan measured out of budget, the same plan with one more conv lowered in): the
    t-bisection trusts the estimates' order and stops at the first plan out of budget; polish
    steps (one more group lowered than the fastest in-budget plan, measured) find a faster
    in-budget plan in a good share of them, never a slower answer, within the evaluation cap.
    Without polish none of that is measured."""
    names, edges = _chain(8)
    improved = 0
    for seed in range(40):
        rng = random.Random(seed)
        gain = {(g, I8): rng.uniform(0.02, 0.1) for g in names}
        estimate = {(g, I8): rng.uniform(0.005, 0.05) for g in names}
        true = {o: max(0.0, v + rng.gauss(0, 0.02)) for o, v in estimate.items()}
        fake = FakeEvaluator(names, edges, gain, true, c_edge=0.0)
        budget = 0.5 * sum(true.values())
        accept = lambda e, budget=budget: e.ok and e.drop <= budget  # noqa: E731
        best = {}
        for polish in (0, 2):
            search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                                    sensitivity=estimate, prior_gain=gain, max_evaluations=12,
                                    polish=polish)
            evs = drive([search], fake)
            assert len(evs) <= 12 and search.best is not None and accept(search.best)
            steps = [e for e in evs if e.label == "boundary polish"]
            assert len(steps) == search.polish_steps == search.report()["polish_steps"] <= polish
            best[polish] = search.best.latency_ratio
        assert best[2] <= best[0] + 1e-12
        improved += best[2] < best[0] - 1e-9
    assert improved >= 8


def test_with_nothing_in_budget_there_is_no_refit_and_no_fallback():
    """A budget no plan meets (resnet-digits at 0.01%): the least sensitive groups are slower
    lowered than the profiler said, so their plans are timed slower than the baseline (no
    accuracy pass) and t moves up past them; the plans above are out of budget. Nothing was
    measured in budget, so the search ends there: no refit toward a t only timed slower, and
    nothing for the holdout to fall back from."""
    names, edges = _chain(8)
    gain = {(g, I8): 0.05 for g in names} | {("g6", I8): -0.02, ("g7", I8): -0.02}
    sens = {(g, I8): 0.01 * (i + 1) for i, g in enumerate(names[:6])} | \
        {("g6", I8): 0.001, ("g7", I8): 0.001}
    prior = {o: 0.05 for o in gain}  # the profiler missed that g6 and g7 are slower lowered
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    accept = lambda e: e.ok and e.drop <= 0.0005  # noqa: E731

    def gated(plan, label):  # before any plan is in budget, the gate is the baseline
        e = fake(plan, label)
        if e.latency_ratio > 1.0:
            return Evaluation(plan=plan, status=Status.SLOWER, label=label,
                              latency_ratio=e.latency_ratio)
        return e

    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=prior, max_evaluations=12)
    evs = drive([search], fake, evaluate_latency_first=gated)
    assert search.gated >= 1 and search.best is None
    assert not [e for e in evs if "refit" in e.label]
    assert not search.fall_back() and not drive([search], fake)
    assert len(evs) <= 6


@pytest.mark.parametrize("per_group,skips", [(-0.05, False), (0.0005, True)])
def test_plans_predicted_no_faster_than_known_are_not_measured(per_group, skips):
    """int8 slower than float everywhere (a tiny CNN on a CPU), or faster by less than the
    noise: after the all-lowered plan and the probes nothing is predicted faster than the
    baseline by `improve`, so nothing more is measured (the program keeps everything float, or
    its plan is skipped)."""
    names, edges = _chain(6)
    gain = {(g, I8): per_group for g in names}
    sens = {(g, I8): 0.1 * (i + 1) for i, g in enumerate(names)}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    accept = lambda e: e.ok and e.drop <= 0.5  # noqa: E731
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=gain, max_evaluations=12)
    evs = drive([search], fake)
    assert [e.label for e in evs] == ["boundary all-lowered", "boundary probe: alternate groups",
                                      "boundary probe: first half"]
    assert (search.skipped > 0) == skips


def test_safer_fallback_plans_follow_an_accuracy_boundary_when_the_holdout_refuses():
    """The holdout may refuse the plans the search split let through: after an accuracy
    boundary, once the caller says so (`fall_back`, the holdout refused every answer), the best
    predicted plans at half and a quarter of the sensitivity budget are measured too, while
    they are predicted faster than the baseline; until then they are not."""
    names, edges = _chain(8)
    gain = {(g, I8): 0.05 for g in names}
    sens = {(g, I8): 0.1 for g in names}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    accept = lambda e: e.ok and e.drop <= 0.45  # noqa: E731
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=gain, max_evaluations=12)
    evs = drive([search], fake)
    assert not [e for e in evs if "fallback" in e.label] and search.done
    assert search.fall_back() and not search.fall_back()  # once
    evs += drive([search], fake)
    fallbacks = [e for e in evs if e.label.startswith("boundary fallback")]
    assert len(fallbacks) == 2 and len(evs) <= 12
    assert [len(e.plan.groups_at(I8)) for e in fallbacks] == [2, 1]  # t = 0.4 -> 0.2 -> 0.1
    assert search.best.plan.groups_at(I8) and len(search.best.plan.groups_at(I8)) == 4


def test_the_last_evaluations_are_kept_for_the_fallbacks():
    """With too few evaluations for the bisection to settle, the search still ends with its
    fallback plans (the holdout may refuse the in-budget ones), not with a last bisection step;
    without an accuracy boundary nothing is reserved."""
    names, edges = _chain(16)
    gain = {(g, I8): 0.05 for g in names}
    sens = {(g, I8): 0.01 * (i + 1) for i, g in enumerate(names)}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    accept = lambda e: e.ok and e.drop <= 0.2  # noqa: E731
    unlimited = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                               sensitivity=sens, prior_gain=gain, max_evaluations=50)
    steps = [e for e in drive([unlimited], fake) if e.label.startswith("boundary t=")]
    assert len(steps) >= 3  # the bisection alone wants more than the 7 - 3 - 2 left below
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                            sensitivity=sens, prior_gain=gain, max_evaluations=7)
    evs = drive([search], fake)
    assert len(evs) == 5  # the search stops with two evaluations left
    assert search.best is not None and fake.drop(search.best.plan) <= 0.2
    assert search.fall_back()
    evs += drive([search], fake)
    assert len(evs) == 7
    assert [e.label.split(" t=")[0] for e in evs[-2:]] == ["boundary fallback"] * 2

    everything_fits = lambda e: e.ok and e.drop <= 10  # noqa: E731
    search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, everything_fits,
                            sensitivity=sens, prior_gain=gain, max_evaluations=7)
    evs = drive([search], fake)
    assert not search.fall_back()  # no accuracy boundary: no fallback, nothing reserved
    assert not [e for e in evs + drive([search], fake) if "fallback" in e.label]


def test_secant_steps_start_where_the_measured_drops_say():
    """The all-lowered plan is just out of budget (0.16 against 0.115) because of one sensitive
    group: with an accept function that says how far out (a BudgetAccept), the first t step is
    the secant's (t = 0.115), whose plan is the optimum (everything but that group lowered);
    geometric steps from the smallest sensitivity reach it a step later, and the search ends
    with fewer measurements."""
    names, edges = _chain(12)
    gain = {(g, I8): 0.05 for g in names}
    sens = {(g, I8): (0.05 if g == "g5" else 0.01) for g in names}
    fake = FakeEvaluator(names, edges, gain, sens, c_edge=0.0)
    optimum = Plan.of({g: (F32 if g == "g5" else I8) for g in names})
    steering = BudgetAccept(allowed=0.115, bound=False)
    runs = {}
    for name, accept in [("secant", steering), ("geometric", lambda e: steering(e))]:
        search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                                sensitivity=sens, prior_gain=gain, max_evaluations=12)
        evs = drive([search], fake)
        assert search.best.plan == optimum
        steps = [e for e in evs if e.label.startswith("boundary t=")]
        runs[name] = ([e.plan for e in steps].index(optimum), len(evs), search.secant_steps)
    assert runs["secant"][0] == 0 and runs["geometric"][0] >= 1
    assert runs["secant"][1] < runs["geometric"][1]
    assert runs["secant"][2] >= 1 and runs["geometric"][2] == 0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("bound", [False, True])
def test_secant_steps_keep_the_search_sound_when_drops_are_not_linear(seed, bound):
    """Drops that grow faster than the summed sensitivity (squared, plus a bound's margin):
    the secant lands on the same side again and again, the safeguard falls back to geometric
    steps, and the answer is in budget within the evaluation cap, no slower than what geometric
    steps alone find by more than one group's gain."""
    rng = random.Random(seed)
    names, edges = _chain(10)
    gain = {(g, I8): rng.uniform(0.02, 0.08) for g in names}
    sens = {(g, I8): rng.uniform(0.001, 0.05) for g in names}

    class Curved(FakeEvaluator):
        def drop(self, plan):
            s = super().drop(plan)
            return 4 * s * s

    fake = Curved(names, edges, gain, sens, c_edge=0.02)
    upper = lambda e: (e.drop + 0.01) if bound else e.drop  # noqa: E731
    allowed = 4 * (0.4 * sum(sens.values())) ** 2 + (0.01 if bound else 0.0)
    steering = BudgetAccept(allowed=allowed, bound=bound)

    def evaluate(plan, label):
        e = fake(plan, label)
        return Evaluation(**{**e.__dict__, "drop_upper": upper(e)})

    found = {}
    for name, accept in [("secant", steering), ("geometric", lambda e: steering(e))]:
        search = BoundarySearch(names, edges, F32, {g: I8 for g in names}, accept,
                                sensitivity=sens, prior_gain=gain, max_evaluations=12)
        evs = drive([search], evaluate)
        assert len(evs) <= 12
        assert search.best is not None and steering(search.best)
        assert (search.secant_steps >= 1) == (name == "secant")
        found[name] = fake.truth(search.best.plan)
    assert found["secant"] <= found["geometric"] + max(gain.values())
