"""One peer quantizer, run as its users run it, in the peer's own virtual environment (its pins
never touch ours). Started by benchmarks/peers.py; imports nothing from trt_mpq.

    python peer_worker.py PEER WORK_DIR

WORK_DIR holds `model.onnx` (the FP32 model a user would hand the tool), `data.npz` (the
calibration / search splits: `calibration/<input>`, `search/<input>`, `search/#labels`) and
`task.json` (`inputs`, `output`, `budget` as a relative drop, `batch`). The peer's model goes
to WORK_DIR/PEER/model.onnx with WORK_DIR/PEER/info.json (wall time, what it tried, its own
accuracy on the search split, or the error).

Peers:
  ort-dynamic   onnxruntime.quantization.quantize_dynamic, per-channel int8 weights
  ort-static    onnxruntime.quantization.quantize_static, QDQ, per-channel, MinMax calibration
  inc-dynamic   Intel onnx-neural-compressor accuracy-aware tuning (autotune), the dynamic
                config set, tolerable_loss = the budget, eval = accuracy on the search split
  inc-static    the same with the static config set and the calibration split
  nncf          NNCF quantize_with_accuracy_control (relative max_drop = the budget)
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def load(work: Path):
    task = json.loads((work / "task.json").read_text())
    data = np.load(work / "data.npz")
    split = {s: {k: data[f"{s}/{k}"] for k in task["inputs"]} for s in ("calibration", "search")}
    return task, split, data["search/#labels"]


def batches(feeds: dict, size: int):
    n = len(next(iter(feeds.values())))
    for i in range(0, n, size):
        yield {k: v[i:i + size] for k, v in feeds.items()}


def accuracy(model, task, feeds, labels) -> float:
    """Top-1 accuracy of `model` (path or ModelProto) on `feeds`, ONNX Runtime defaults."""
    import onnxruntime as ort

    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    index = names.index(task["output"]) if task["output"] in names else 0
    preds = [np.argmax(sess.run(None, b)[index], axis=-1) for b in batches(feeds, task["batch"])]
    return float(np.mean(np.concatenate(preds) == labels))


class Reader:
    """A calibration data reader (ONNX Runtime's and INC's interface: get_next / rewind)."""

    def __init__(self, feeds: dict, size: int) -> None:
        self.feeds, self.size = feeds, size
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(list(batches(self.feeds, self.size)))


def ort_dynamic(work, task, split, labels, out):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(work / "model.onnx"), str(out), per_channel=True,
                     weight_type=QuantType.QInt8)
    return {"settings": "quantize_dynamic(per_channel=True, weight_type=QInt8)"}


def ort_static(work, task, split, labels, out):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(work / "model.onnx"), str(out), Reader(split["calibration"], 16),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"settings": "quantize_static(QDQ, per_channel=True, U8S8, MinMax)"}


def _inc(kind, work, task, split, labels, out):
    import onnx
    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, tuning

    class IncReader(Reader, data_reader.CalibrationDataReader):
        pass

    trials = []

    def eval_fn(model) -> float:
        acc = accuracy(model, task, split["search"], labels)
        trials.append(acc)
        return acc

    cls = config.DynamicQuantConfig if kind == "dynamic" else config.StaticQuantConfig
    tune = tuning.TuningConfig(config_set=cls.get_config_set_for_tuning(),
                               tolerable_loss=task["budget"])
    try:
        best = tuning.autotune(model_input=str(work / "model.onnx"), tune_config=tune,
                               eval_fn=eval_fn,
                               calibration_data_reader=IncReader(split["calibration"], 16))
    except SystemExit:  # INC 1.0 calls exit(0) when no configuration meets the tolerable loss
        best = None
    if best is None:
        raise RuntimeError(f"no configuration met tolerable_loss={task['budget']} "
                           f"({len(trials)} evaluations: {trials})")
    onnx.save(best, str(out))
    return {"settings": f"autotune({cls.__name__}.get_config_set_for_tuning(), "
                        f"tolerable_loss={task['budget']})", "evaluations": len(trials),
            "trial_accuracies": trials}


def inc_dynamic(*args):
    return _inc("dynamic", *args)


def inc_static(*args):
    return _inc("static", *args)


def nncf_peer(work, task, split, labels, out):
    import nncf
    import onnx

    model = onnx.load(str(work / "model.onnx"))
    calib = nncf.Dataset(list(batches(split["calibration"], 1)))
    val_items = list(zip(batches(split["search"], task["batch"]),
                         np.array_split(labels, range(task["batch"], len(labels), task["batch"]))))
    validation = nncf.Dataset(val_items)

    def validation_fn(model, data):
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        index = names.index(task["output"]) if task["output"] in names else 0
        hits = [np.argmax(sess.run(None, feed)[index], axis=-1) == y for feed, y in data]
        return float(np.mean(np.concatenate(hits))), None

    q = nncf.quantize_with_accuracy_control(
        model, calib, validation, validation_fn, max_drop=task["budget"],
        drop_type=nncf.DropType.RELATIVE, subset_size=len(split["calibration"][task["inputs"][0]]))
    onnx.save(q, str(out))
    return {"settings": f"quantize_with_accuracy_control(max_drop={task['budget']}, relative)"}


PEERS = {"ort-dynamic": ort_dynamic, "ort-static": ort_static, "inc-dynamic": inc_dynamic,
         "inc-static": inc_static, "nncf": nncf_peer}


def main(peer: str, work: Path) -> int:
    out_dir = work / peer
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {"peer": peer}
    t0 = time.perf_counter()
    try:
        task, split, labels = load(work)
        info.update(PEERS[peer](work, task, split, labels, out_dir / "model.onnx"))
        info["wall_s"] = time.perf_counter() - t0
        info["search_accuracy"] = accuracy(out_dir / "model.onnx", task, split["search"], labels)
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result, recorded as such
        info.update(wall_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:2000],
                    traceback=traceback.format_exc()[-3000:])
    (out_dir / "info.json").write_text(json.dumps(info, indent=2, default=str))
    print(json.dumps({k: v for k, v in info.items() if k != "traceback"}, default=str)[:2000])
    return 0 if "error" not in info else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
