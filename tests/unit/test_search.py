"""Search strategies against a fake evaluator with a known answer (no backend involved)."""

import math

import pytest

from trt_mpq.errors import BudgetError
from trt_mpq.measure import LatencyStats
from trt_mpq.plan import Plan
from trt_mpq.plan import Precision as P
from trt_mpq.search import (
    Around,
    Bisection,
    Budget,
    Evaluation,
    PrefixPlans,
    PrefixSweep,
    Status,
    area_under_frontier,
    drive,
    frontier,
    ranked_in_budget,
)

N = 12
ORDER = [f"g{i:02d}" for i in range(N)]
COST = [0.001 * (i + 1) for i in range(N)]  # drop caused by lowering group i (increasing)


def prefixes():
    return PrefixPlans(ORDER, {g: P.INT8 for g in ORDER}, P.FP32)


def fake_eval(latency=lambda k: 1.0 - 0.05 * k, fail=()):
    calls = []

    def evaluate(plan: Plan, label: str) -> Evaluation:
        k = len(plan.groups_at(P.INT8))
        calls.append(k)
        if k in fail:
            return Evaluation(plan=plan, status=Status.BUILD_FAILED, reason="x", label=label)
        drop = sum(COST[i] for i in range(N) if plan[ORDER[i]] is P.INT8)
        lat = LatencyStats.of([latency(k) * 1e-3] * 3)
        base = LatencyStats.of([1e-3] * 3)
        return Evaluation(plan=plan, status=Status.OK, label=label, metric=0.9 - drop, drop=drop,
                          rel_drop=drop / 0.9, latency=lat, baseline_latency=base,
                          latency_ratio=latency(k))

    return evaluate, calls


def accept_for(max_drop):
    return lambda e: e.ok and e.drop <= max_drop + 1e-12


def largest_k(max_drop):
    return max(k for k in range(N + 1) if sum(COST[:k]) <= max_drop + 1e-12)


@pytest.mark.parametrize("max_drop", [0.0, 0.0005, 0.003, 0.02, 0.05, 1.0])
def test_bisection_finds_the_largest_in_budget_prefix(max_drop):
    evaluate, calls = fake_eval()
    bis = Bisection(prefixes(), accept_for(max_drop))
    drive([bis], evaluate)
    assert bis.best_k == largest_k(max_drop)
    assert len(calls) <= 1 + math.ceil(math.log2(N))
    assert calls[0] == N  # everything lowered is tried first
    if largest_k(max_drop) == N:
        assert calls == [N]


def test_failures_count_as_out_of_budget():
    evaluate, calls = fake_eval(fail={N, 6})
    bis = Bisection(prefixes(), accept_for(1.0))
    drive([bis], evaluate)
    assert bis.best_k < 6


def test_sweep_and_refine_and_dedup():
    evaluate, calls = fake_eval()
    bis = Bisection(prefixes(), accept_for(0.02))
    strategies = [bis, Around(prefixes(), lambda: bis.best_k, width=2), PrefixSweep(prefixes(), 4)]
    evs = drive(strategies, evaluate)
    ks = [len(e.plan.groups_at(P.INT8)) for e in evs]
    assert len(ks) == len(set(ks))  # no plan evaluated twice
    k = largest_k(0.02)
    assert {k - 2, k - 1, k, k + 1} <= set(ks)
    assert {3, 6, 9, 12} <= set(ks)


def test_answer_is_fastest_measured_not_largest_k():
    # latency is not monotone in k: k=4 is fastest; k=5.. are slower (layout conversions)
    lat = {0: 1.0, 4: 0.55}
    evaluate, _ = fake_eval(latency=lambda k: lat.get(k, 0.9 - 0.01 * k))
    bis = Bisection(prefixes(), accept_for(0.02))
    evs = drive([bis, Around(prefixes(), lambda: bis.best_k), PrefixSweep(prefixes(), 3)], evaluate)
    best = ranked_in_budget(evs, accept_for(0.02))[0]
    assert len(best.plan.groups_at(P.INT8)) == 4 and best.latency_ratio == 0.55


def test_frontier_is_pareto_optimal():
    evaluate, _ = fake_eval(latency=lambda k: {0: 1.0, 2: 0.7, 4: 0.8, 6: 0.5, 8: 0.6}.get(k, 1.0))
    pp = prefixes()
    evs = [evaluate(pp.plan(k), f"k={k}") for k in (0, 2, 4, 6, 8)]
    front = frontier(evs)
    assert [len(e.plan.groups_at(P.INT8)) for e in front] == [6, 2, 0]
    assert 0 < area_under_frontier(front, 0.05) <= 1


def test_strategies_refuse_unasked_plans():
    bis = Bisection(prefixes(), accept_for(1))
    bis.ask()
    with pytest.raises(ValueError):
        bis.tell(prefixes().plan(3), None)


@pytest.mark.parametrize("text, max_drop, relative", [
    ("1%", 0.01, True), ("0.01%", 0.0001, True), (" 0.5 % ", 0.005, True), ("0.005", 0.005, False),
    ("2", 2.0, False), ("1e-3", 1e-3, False)])
def test_budget_parse(text, max_drop, relative):
    b = Budget.parse(text)
    assert b.max_drop == pytest.approx(max_drop) and b.relative is relative


@pytest.mark.parametrize("text", ["", "abc", "-1%", "1%%", "150%", "nan"])
def test_budget_parse_errors(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_budget_accepts():
    b = Budget.parse("1%")
    assert b.allowed_drop(0.8) == pytest.approx(0.008)
    assert b.accepts(0.008, 0.8) and not b.accepts(0.0081, 0.8) and not b.accepts(None, 0.8)
    # the allowed drop itself is in budget (up to float rounding), a hair above it is not
    allowed = Budget.parse("0.1%").allowed_drop(0.9123)
    assert Budget.parse("0.1%").accepts(allowed, 0.9123)
    assert not Budget.parse("0.1%").accepts(allowed * (1 + 1e-6), 0.9123)
    assert not Budget.parse("0.005").accepts(0.005 + 1e-9, 0.5)


def test_drive_sends_latency_first_strategies_to_the_latency_first_evaluator():
    """Sweeps and refinements only matter if faster than the best plan so far: drive hands
    their proposals to the evaluator that may skip the accuracy pass; bisection steers by
    accuracy and always gets the full evaluation."""
    evaluate, calls = fake_eval()
    gated = []

    def latency_first(plan, label):
        gated.append(label)
        return evaluate(plan, label)

    pp = prefixes()
    bis = Bisection(pp, lambda e: e.ok and e.drop <= 0.004)
    drive([bis, PrefixSweep(pp, 3)], evaluate, evaluate_latency_first=latency_first)
    assert gated and all(label.startswith("sweep") for label in gated)
    assert not Bisection.latency_first and PrefixSweep.latency_first and Around.latency_first


def test_the_accuracy_gate_is_the_best_plan_with_its_margin_capped_at_the_baseline():
    """A latency-first plan skips its accuracy pass when timed slower than the fastest in-budget
    plan by more than the margin, and before any plan is in budget when slower than the
    baseline: `pick_answer` never takes a plan that is not faster than the baseline."""
    from trt_mpq.pipeline.gate import Gate, accuracy_gate
    from trt_mpq.results import Evaluation, Status

    def best(ratio):
        return Evaluation(plan=Plan.of({"a": P.INT8}), status=Status.OK, label="b", metric=1.0,
                          drop=0.0, rel_drop=0.0, latency_ratio=ratio)

    assert accuracy_gate(None, 0.03) == Gate(1.0)  # no rival before any plan is in budget
    gate = accuracy_gate(best(0.5), 0.03, 0.15)
    assert gate.ratio == pytest.approx(0.515) and gate.recheck == pytest.approx(0.575)
    assert gate.rival == Plan.of({"a": P.INT8}) and gate.margin == 0.03
    assert accuracy_gate(best(0.99), 0.03, 0.15).ratio == 1.0
    assert accuracy_gate(best(0.99), 0.03, 0.15).recheck == 1.0
    assert accuracy_gate(best(0.5), 0.0).ratio == 0.5
    assert Gate.from_json_dict(gate.to_json_dict()) == gate  # as it travels to a Ray worker


def test_the_gates_rival_is_the_fastest_plan_in_budget_only():
    """A plan out of budget or no faster than the baseline never becomes the rival that sets
    the accuracy gate, however fast it timed: a faster rival would make later plans skip
    their accuracy pass against a plan that cannot be the answer."""
    from trt_mpq.pipeline.gate import FastestInBudget
    from trt_mpq.results import Evaluation, Status

    base = Plan.of({"a": P.FP32, "b": P.FP32})

    def e(name, ratio, drop, plan=None):
        plan = plan or Plan.of({"a": P.INT8, "b": P.INT8 if name.endswith("2") else P.FP32})
        return Evaluation(plan=plan, status=Status.OK, label=name, metric=1.0 - drop,
                          drop=drop, rel_drop=drop, latency_ratio=ratio)

    fastest = FastestInBudget(lambda ev: ev.ok and ev.drop <= 0.01, 0.03, 0.15, base)
    fastest.see(e("in budget", 0.6, 0.005))
    fastest.see(e("out of budget 2", 0.4, 0.2))  # faster, but over the budget
    fastest.see(e("baseline", 0.5, 0.0, plan=base))  # the baseline is never the rival
    assert fastest.best.label == "in budget"
    assert fastest.gate().rival == fastest.best.plan
    assert fastest.gate().ratio == pytest.approx(0.6 * 1.03)
    fastest.see(e("faster in budget 2", 0.5, 0.0))
    assert fastest.best.label == "faster in budget 2"
    fastest.see(e("slower in budget", 0.55, 0.0))
    assert fastest.best.label == "faster in budget 2"
    # with two finalists, a plan can be the answer until two other precision assignments in
    # budget are faster: the gate's rival is the second fastest of them
    two = FastestInBudget(lambda ev: ev.ok and ev.drop <= 0.01, 0.03, 0.15, base, keep=2)
    two.see(e("a", 0.5, 0.0))
    assert two.gate().ratio == 1.0 and two.gate().rival is None  # one is not enough
    two.see(e("a, its faster variant", 0.45, 0.0, plan=e("a", 0, 0).plan.with_options(
        {"opt": "1"})))  # the same precisions: still one assignment
    assert two.gate().ratio == 1.0
    two.see(e("b 2", 0.6, 0.0))
    two.see(e("out 2", 0.3, 0.5))
    assert two.gate().rival == e("b 2", 0, 0).plan
    assert two.gate().ratio == pytest.approx(0.6 * 1.03)


def test_drive_in_batches_evaluates_and_tells_what_one_at_a_time_does():
    """With `evaluate_batch` (a cluster), each ask's new plans go out together -- a sweep and
    the points around the boundary are one batch each -- and the same plans are evaluated and
    told as one at a time."""
    def run(batched: bool):
        evaluate, calls = fake_eval()
        bis = Bisection(prefixes(), accept_for(0.02))
        strategies = [bis, Around(prefixes(), lambda: bis.best_k, width=3),
                      PrefixSweep(prefixes(), N)]
        batches: list[list[int]] = []

        def batch(proposals, latency_first):
            batches.append([len(p.groups_at(P.INT8)) for p, _ in proposals])
            return [evaluate(p, label) for p, label in reversed(proposals)][::-1]

        evs = drive(strategies, evaluate, evaluate_batch=batch if batched else None)
        return [len(e.plan.groups_at(P.INT8)) for e in evs], batches, bis.best_k

    one, _, k1 = run(False)
    many, batches, k2 = run(True)
    assert sorted(one) == sorted(many) and k1 == k2 == largest_k(0.02)
    assert max(len(b) for b in batches) >= 3  # the sweep and the refinement went out at once
    assert sorted(k for b in batches for k in b) == sorted(many)  # nothing evaluated twice


@pytest.mark.parametrize("max_drop", [0.0, 0.003, 0.02, 0.05, 1.0])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_speculative_bisection_takes_the_same_path_in_fewer_rounds(max_drop, depth):
    """With the next levels' midpoints speculated in each batch, the bisection settles on the
    boundary one midpoint at a time finds, having measured every plan that one did, in at most
    ceil(levels / (depth + 1)) rounds after the first; with a fixed depth the batched and the
    one-at-a-time drive measure the same plans."""
    def run(d: int, batched: bool):
        evaluate, calls = fake_eval()
        bis = Bisection(prefixes(), accept_for(max_drop), speculate=d)
        rounds = []

        def batch(proposals, latency_first):
            rounds.append(len(proposals))
            return [evaluate(p, label) for p, label in proposals]

        drive([bis], evaluate, evaluate_batch=batch if batched else None)
        return bis.best_k, sorted(calls), rounds

    k0, plain, plain_rounds = run(0, True)
    k, spec, rounds = run(depth, True)
    assert k == k0 == largest_k(max_drop)
    assert set(plain) <= set(spec)  # the one-at-a-time path is among the speculated plans
    assert len(spec) == len(set(spec))  # nothing measured twice
    assert len(rounds) <= 1 + math.ceil((len(plain_rounds) - 1) / (depth + 1))
    assert max(rounds) <= 2 ** (depth + 1) - 1
    assert run(depth, False)[:2] == (k, spec)  # the same plans without a cluster
    with pytest.raises(ValueError, match="speculate"):
        Bisection(prefixes(), accept_for(max_drop), speculate=-1)


def test_ray_workers_get_the_request_without_the_drivers_own_settings(tmp_path, monkeypatch):
    pytest.importorskip("ray")

    from trt_mpq.cli.parser import build_parser
    from trt_mpq.cli.search import search_request
    from trt_mpq.errors import ConfigError
    from trt_mpq.pipeline.executor import make_executor
    from trt_mpq.pipeline.request import SearchRequest

    class Backend:
        name = "ort-cpu"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRT_MPQ_CACHE", str(tmp_path / "cache"))
    argv = ["-v", "search", "m.onnx", "--task", "t:f", "--max-drop", "1%", "--out", "x",
            "--executor", "ray", "--ray-address=auto", "--resume", "--repeats", "7",
            "--mix-devices", "--no-progress"]
    request = search_request(build_parser().parse_args(argv))
    ex = make_executor(request, Backend())
    assert ex.address == "auto" and ex.mix_devices and not ex.gpu
    worker = SearchRequest.from_json_dict(ex.spec.request)  # what a worker receives
    assert worker.model.model == str(tmp_path / "m.onnx") and worker.model.task == "t:f"
    assert worker.measure.repeats == 7 and worker.search.budget == request.search.budget
    assert worker.output.out is None and not worker.output.resume  # the driver's own
    assert worker.executor.kind == "local" and worker.model.cache_dir == tmp_path / "cache"
    assert ex.spec.env["TRT_MPQ_CACHE"] == str(tmp_path / "cache")
    assert str(tmp_path) in ex.spec.env["PYTHONPATH"].split(":")
    for flags, message in [(["--ray-address", "auto"], "needs --executor ray"),
                           (["--mix-devices"], "--mix-devices needs --executor ray")]:
        with pytest.raises(ConfigError, match=message):
            search_request(build_parser().parse_args(["search", "m.onnx", "--max-drop", "1%",
                                                      *flags]))
    request = search_request(build_parser().parse_args(
        ["search", "m.onnx", "--max-drop", "1%", "--backend", "tensorrt", "--executor", "ray"]))
    Backend.name = "tensorrt"
    assert make_executor(request, Backend()).gpu  # a GPU backend: one worker per GPU


def test_ray_workers_go_one_per_timing_device():
    from trt_mpq.pipeline.executor import placements

    nodes = [{"NodeID": "a", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}},
             {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2.0}},
             {"NodeID": "c", "Alive": False, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"NodeID": "d", "Alive": True, "Resources": {"CPU": 0.5, "GPU": 1.0}}]
    # CPU timing: one worker per live node with a whole CPU, whatever its core count
    assert placements(nodes, gpu=False) == [("a", {"num_cpus": 1}), ("b", {"num_cpus": 1})]
    # GPU timing: one per GPU of each live node, none on a node without one
    gpu = placements(nodes, gpu=True)
    assert [n for n, _ in gpu] == ["a", "a", "a", "a", "d"]
    assert all(r == {"num_cpus": 0, "num_gpus": 1} for _, r in gpu)


def test_ray_workers_on_another_device_type_are_left_out_unless_mixed():
    from trt_mpq.backends import backend_spec
    from trt_mpq.pipeline.executor import like_the_driver

    kinds = ["EPYC (2 cores)", "Xeon (8 cores)", "EPYC (2 cores)", "EPYC (1 cores)"]
    assert like_the_driver(kinds, "EPYC (2 cores)", mix=False) == [0, 2]
    assert like_the_driver(kinds, "EPYC (2 cores)", mix=True) == [0, 1, 2, 3]
    assert like_the_driver(kinds, "H100", mix=False) == []
    assert backend_spec("tensorrt").gpu and backend_spec("tensorrt-rtx").gpu
    assert not backend_spec("ort-cpu").gpu
    from trt_mpq.backends.ort import OrtBackend, OrtConfig

    # the CPU's model and cores, and the threads a plan runs with: 2 and 3 threads differ
    two, three = (OrtBackend(OrtConfig(threads=n)).timing_device() for n in (2, 3))
    assert two.endswith(", 2 intra-op threads") and two != three


def test_the_log_says_in_or_out_of_budget_as_the_search_judges():
    """Where the search judges by the drop's upper bound, a plan whose point drop is within the
    budget but whose bound is not is logged out of budget, with its bound; by point estimates,
    the same plan is in budget."""
    import logging

    from trt_mpq.pipeline.search import _log_evaluation
    from trt_mpq.results import Evaluation, Status
    from trt_mpq.search import BudgetAccept

    ev = Evaluation(plan=Plan.of({"a": P.INT8}), status=Status.OK, label="k=1", metric=0.795,
                    drop=0.005, rel_drop=0.00625, drop_upper=0.012, latency_ratio=0.5)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("trt_mpq.pipeline.search")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        _log_evaluation(ev, BudgetAccept(allowed=0.008, bound=True), 0.8)
        _log_evaluation(ev, BudgetAccept(allowed=0.008, bound=False), 0.8)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    bound, point = (r.getMessage() for r in records)
    assert bound.endswith("(out of budget)") and "(<= +1.50%)" in bound
    assert point.endswith("(in budget)") and "<=" not in point
