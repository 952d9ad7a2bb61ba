"""Mutation check of the search's guarantees: break the code on purpose, one deliberate bug at a
time, and the unit tests of that area must fail.

    python tests/mutants.py            # every mutant; a table, exit 1 if any survives
    python tests/mutants.py -k gate    # those whose name contains "gate"

Each mutant replaces one exact piece of source (found exactly once) in a copy of the package,
then runs the named unit test files there (`pytest -x`): "caught" when they fail. The
unmutated copy is checked to pass first. Not part of the test suite (it runs the suites of
its areas once per mutant, a few minutes in all); rerun it after changing a guarantee.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # in the package
    old: str
    new: str
    tests: tuple[str, ...]  # the unit tests of its own area


MUTANTS = [
    Mutant("the gate's rival may be out of budget", "trt_mpq/pipeline/gate.py",
           "if self.accept(ev) and ev.plan != self.baseline_plan",
           "if ev.plan != self.baseline_plan", ("tests/unit/test_search.py",)),
    Mutant("an undecided holdout verdict certifies", "trt_mpq/pipeline/answer.py",
           "in_budget = seq.decision == IN", 'in_budget = seq.decision != "out"',
           ("tests/unit/test_pick_answer.py",)),
    Mutant("every holdout try at the full level", "trt_mpq/pipeline/judging.py",
           "return replace(self.rule, confidence=level)", "return self.rule",
           ("tests/unit/test_pick_answer.py",)),
    Mutant("an answer no faster than the baseline", "trt_mpq/pipeline/answer.py",
           "if conf.in_budget and conf.latency_ratio < 1.0:", "if conf.in_budget:",
           ("tests/unit/test_pick_answer.py",)),
    Mutant("prune may lower groups its anchor did not", "trt_mpq/search/prune.py",
           "allowed=lowered,", "allowed=None,", ("tests/unit/test_prune.py",)),
    Mutant("the looks in file order", "trt_mpq/measure/sequential.py",
           "return np.random.default_rng(self.seed).permutation(n)", "return np.arange(n)",
           ("tests/unit/test_sequential.py",)),
    Mutant("every look at the full level", "trt_mpq/measure/sequential.py",
           "return (1 - early,) * (looks - 1) + (1 - alpha * self.final_share,)",
           "return (self.confidence,) * looks", ("tests/unit/test_sequential.py",)),
    Mutant("an early look stops on a bootstrap bound", "trt_mpq/measure/sequential.py",
           "sizes = rule.looks(n) if metric.binary else (n,)", "sizes = rule.looks(n)",
           ("tests/unit/test_sequential.py",)),
    Mutant("bootstrap bounds on a few resamples", "trt_mpq/measure/stats.py",
           "rounds = max(rounds, math.ceil(BOOTSTRAP_TAIL / (1 - confidence) - 1e-9))",
           "rounds = rounds", ("tests/unit/test_stats.py",)),
    Mutant("discordant pairs at twice the error level", "trt_mpq/measure/stats.py",
           "upper = paired_upper(worse, better, n, alpha)",
           "upper = paired_upper(worse, better, n, 2 * alpha)", ("tests/unit/test_stats.py",)),
    Mutant("the paired bound's nuisance at its estimate only", "trt_mpq/measure/paired.py",
           "pis = np.unique(np.concatenate([np.linspace(lo, hi, NUISANCE_GRID), [lo, hi]]))",
           "pis = np.array([min(max((worse + better) / n, lo), hi)])",
           ("tests/unit/test_paired.py",)),
    Mutant("the paired bound without Berger-Boos's gamma", "trt_mpq/measure/paired.py",
           "return min(worst + gamma, 1.0)", "return min(worst, 1.0)",
           ("tests/unit/test_paired.py",)),
    Mutant("the latency prior from one profiled session", "trt_mpq/pipeline/analysis.py",
           "PROFILE_SESSIONS = 3", "PROFILE_SESSIONS = 1", ("tests/unit/test_analysis.py",)),
    Mutant("prune anchored on the plan timed fastest", "trt_mpq/search/prune.py",
           "            self.anchor = min(self.in_budget.values(),",
           "            self.anchor = self.best.plan or min(self.in_budget.values(),",
           ("tests/unit/test_prune.py",)),
    Mutant("prune measures the model's optimum only", "trt_mpq/search/prune.py",
           "        for _ in range(self.per_step):", "        for _ in range(1):",
           ("tests/unit/test_prune.py",)),
    Mutant("a budget the holdout cannot certify is let through", "trt_mpq/pipeline/judging.py",
           "    if floor <= allowed:\n        return\n", "    if True:\n        return\n",
           ("tests/unit/test_sequential.py", "tests/unit/test_resume_phases.py")),
    Mutant("the budget accepts a little more", "trt_mpq/search/evaluation.py",
           "return drop is not None and drop <= self.allowed_drop(baseline_metric) + 1e-12",
           "return drop is not None and drop <= self.allowed_drop(baseline_metric) * 1.01",
           ("tests/unit/test_search.py",)),
    Mutant("the shared cache writes in place", "trt_mpq/store/shared.py",
           "        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f\".{path.name}.\")\n",
           "        path.write_bytes(data)\n        return\n",
           ("tests/unit/test_shared_cache.py",)),
    Mutant("the timing check ignores the spread", "trt_mpq/measure/latency.py",
           "return abs(ratio - 1.0) <= self.tolerance and spread <= self.max_spread",
           "return abs(ratio - 1.0) <= self.tolerance", ("tests/unit/test_timing_check.py",)),
    Mutant("a stored baseline is not timed afresh", "trt_mpq/pipeline/timing.py",
           "if baseline_ev.ok and not baseline_ev.cached\n             else fresh())",
           "if baseline_ev.ok\n             else fresh())", ("tests/unit/test_timing_check.py",)),
    Mutant("a job claim in two steps", "trt_mpq/serve/jobs.py",
           "        with self._write() as db:\n            row = db.execute(\"SELECT id FROM",
           "        for db in [self._db()]:\n            row = db.execute(\"SELECT id FROM",
           ("tests/unit/test_serve_parts.py",)),
    Mutant("a store write outside its transaction", "trt_mpq/store/__init__.py",
           "            self._db.execute(\"BEGIN IMMEDIATE\")\n", "            pass\n",
           ("tests/unit/test_store.py",)),
    Mutant("a setting's range is not checked", "trt_mpq/options.py",
           "        if opt.hi is not None and (value > opt.hi or (opt.below and value == opt.hi)):",
           "        if False:", ("tests/unit/test_serve_parts.py", "tests/unit/test_options.py")),
]


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        *tests], cwd=tree, env=env, capture_output=True, text=True)
    return r.returncode, time.perf_counter() - t0


def copy_tree(dest: Path) -> None:
    for name in ("trt_mpq", "tests", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only mutants whose name contains this")
    args = p.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.name]
    with tempfile.TemporaryDirectory(prefix="trt-mpq-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for m in chosen:  # every mutant must apply to today's source, exactly once
            count = (tree / m.path).read_text().count(m.old)
            if count != 1:
                print(f"mutant {m.name!r}: its source is found {count} times in {m.path}")
                return 2
        areas = tuple(sorted({t for m in chosen for t in m.tests}))
        code, seconds = run_tests(tree, areas)
        if code != 0:
            print(f"the unmutated tests fail ({areas}); fix them first")
            return 2
        print(f"unmutated: {len(areas)} test file(s) pass ({seconds:.0f} s)\n")
        print("| mutant | file | tests | caught | s |\n|---|---|---|---|---|")
        survived = 0
        for m in chosen:
            source = tree / m.path
            original = source.read_text()
            source.write_text(original.replace(m.old, m.new))
            try:
                code, seconds = run_tests(tree, m.tests)
            finally:
                source.write_text(original)
            caught = code != 0
            survived += not caught
            print(f"| {m.name} | {m.path} | {', '.join(Path(t).name for t in m.tests)} | "
                  f"{'yes' if caught else '**NO**'} | {seconds:.0f} |", flush=True)
    print(f"\n{len(chosen) - survived} of {len(chosen)} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
