"""Resume at every kill point: an interrupt during sensitivity, the search, the holdout
confirmation or the output writing leaves a store that `--resume` continues from, re-measuring
nothing already measured; a resume with other measurement settings is refused, one with another
budget reuses the (budget-independent) measurements."""

import json

import models
import pytest

from trt_mpq.backends import get_backend
from trt_mpq.calib import CalibConfig
from trt_mpq.errors import StoreError
from trt_mpq.measure import MeasureConfig
from trt_mpq.pipeline import analysis, job
from trt_mpq.pipeline import search as search_module
from trt_mpq.pipeline.config import SearchConfig
from trt_mpq.pipeline.evaluator import Evaluator
from trt_mpq.pipeline.job import SearchInterrupted, search_job
from trt_mpq.search import Budget
from trt_mpq.sensitivity import SensitivityConfig
from trt_mpq.store import Store

MEASURE = MeasureConfig(warmup=1, repeats=5, min_repeats=3)
CALIB = CalibConfig(num_samples=16)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return models.cnn_workspace(tmp_path_factory.mktemp("resume"), total=64, search=24)


@pytest.fixture(scope="module")
def ranges(workspace):
    return workspace.calibrate(CALIB)


# the timing guard and certification have their own tests: point estimates on these 24 samples
SENS = SensitivityConfig(samples=8)
CONFIG = SearchConfig(budget=Budget.parse("50%"), sensitivity_config=SENS,
                      timing_tolerance=0.99, timing_max_spread=100.0, confidence=None)


def _run(workspace, ranges, out, config=CONFIG, measure=MEASURE):
    return search_job(workspace, get_backend("ort-cpu", threads=1), ranges, CALIB, measure,
                      config, out)


def _stored(out):
    with _open(out) as s:
        return {e.plan.digest for e in s.all()}


def _open(out):
    import sqlite3

    db = sqlite3.connect(out / job.STORE_FILE)
    context = json.loads(db.execute("SELECT value FROM meta WHERE key='context'").fetchone()[0])
    db.close()
    return Store(out / job.STORE_FILE, context)


def _interrupt_once(monkeypatch, module, name, after: int = 0):
    """Make `module.name` raise KeyboardInterrupt on its call number `after` (0-based), once."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == after + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return lambda: monkeypatch.setattr(module, name, real)


@pytest.mark.parametrize("phase", ["sensitivity", "search", "confirmation", "outputs"])
def test_an_interrupt_in_each_phase_resumes_without_re_measuring(workspace, ranges, tmp_path,
                                                                monkeypatch, phase):
    out = tmp_path / "out"
    if phase == "sensitivity":
        restore = _interrupt_once(monkeypatch, analysis, "sensitivity")
    elif phase == "search":
        restore = _interrupt_once(monkeypatch, Evaluator, "evaluate", after=3)
    elif phase == "confirmation":
        restore = _interrupt_once(monkeypatch, search_module, "pick_answer")
    else:
        restore = _interrupt_once(monkeypatch, job, "write_search_outputs")
    with pytest.raises(SearchInterrupted) as e:
        _run(workspace, ranges, out)
    restore()
    before = _stored(out)
    assert e.value.saved == len(before)
    if phase == "search":
        assert len(before) == 3  # the baseline and two plans made it in
    if phase in ("confirmation", "outputs"):
        assert len(before) >= 4  # the whole search is in the store
    assert not (out / "result.json").exists()

    result = _run(workspace, ranges, out)  # what --resume does: the same store, same settings
    after = _stored(out)
    assert before <= after
    assert result["cached_evaluations"] == len(before)
    assert result["fresh_evaluations"] == len(after - before)
    if phase in ("confirmation", "outputs"):
        assert result["fresh_evaluations"] == 0
    assert json.loads((out / "result.json").read_text())["evaluations"] == result["evaluations"]


def test_resume_with_other_measurement_settings_is_refused(workspace, ranges, tmp_path):
    out = tmp_path / "out"
    _run(workspace, ranges, out)
    with pytest.raises(StoreError, match="different search.*measure"):
        _run(workspace, ranges, out, measure=MeasureConfig(warmup=1, repeats=7, min_repeats=3))


def test_resume_with_another_budget_reuses_the_measurements(workspace, ranges, tmp_path):
    out = tmp_path / "out"
    _run(workspace, ranges, out)
    before = _stored(out)
    stricter = SearchConfig(budget=Budget.parse("0.1%"), sensitivity_config=SENS,
                            timing_tolerance=0.99, timing_max_spread=100.0, confidence=None)
    (out / "result.json").unlink()
    second = _run(workspace, ranges, out, config=stricter)
    after = _stored(out)
    # the baseline at least is reused; only plans the first search never measured are new
    assert second["cached_evaluations"] >= 1
    assert second["fresh_evaluations"] == len(after - before)
    assert second["budget"]["max_drop"] == pytest.approx(0.001)


def test_a_budget_the_holdout_cannot_certify_is_refused_before_the_search(workspace, ranges,
                                                                           tmp_path):
    from trt_mpq.errors import ConfigError

    tight = SearchConfig(budget=Budget.parse("0.1%"), sensitivity_config=SENS,
                         timing_tolerance=0.99, timing_max_spread=100.0)
    with pytest.raises(ConfigError, match=r"holdout split \(24 samples\) cannot certify.*"
                                          r"upper bound of 0\.14.*needs about \d+ holdout "
                                          r"samples.*--confidence off"):
        _run(workspace, ranges, tmp_path / "out", config=tight)
    assert not (tmp_path / "out" / "result.json").exists()
    loose = SearchConfig(budget=Budget.parse("0.9"), sensitivity_config=SENS,  # absolute
                         timing_tolerance=0.99, timing_max_spread=100.0)
    result = _run(workspace, ranges, tmp_path / "loose", config=loose)
    res = result["holdout_resolution"]
    assert res["holdout_n"] == 24 and res["certifiable"] is True
    # one look; the first of the 3 declared holdout tries gets alpha/2, spent by the exact
    # paired bound on one rate less Berger-Boos's share: 1 - (alpha/2 * 0.98) ** (1/24)
    assert res["first_level"] == 0.975
    assert res["best_case_upper"] == pytest.approx(1 - (0.025 * 0.98) ** (1 / 24), rel=1e-3)
    if result["best"]:  # certified: the bound, not the point estimate, is within the budget
        assert result["best"]["certified"] is True
        assert result["best"]["holdout_drop_upper"] <= 0.9
        assert result["best"]["holdout_samples_used"] == 24
    assert "Certification: the answer is in budget only if" in (
        tmp_path / "loose" / "report.md").read_text()
