import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "fixtures"))

import models  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    gpu = False
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:
        pass
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "zoo" in item.keywords and not HAS_TORCH:
            item.add_marker(pytest.mark.skip(reason="needs the [zoo] extra (torch)"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cnn_path(tmp_path_factory) -> Path:
    return models.tiny_cnn(tmp_path_factory.mktemp("m") / "tiny_cnn.onnx")


@pytest.fixture(scope="session")
def transformer_path(tmp_path_factory) -> Path:
    return models.tiny_transformer(tmp_path_factory.mktemp("m") / "tiny_transformer.onnx")


@pytest.fixture(scope="session")
def prepared_cnn(cnn_path, cache_dir):
    from trt_mpq.model import find_groups, prepare_model

    path = prepare_model(cnn_path, cache_dir)
    model = onnx.load(str(path))
    return path, model, find_groups(model)


@pytest.fixture(scope="session")
def prepared_transformer(transformer_path, cache_dir):
    from trt_mpq.model import find_groups, prepare_model

    path = prepare_model(transformer_path, cache_dir)
    model = onnx.load(str(path))
    return path, model, find_groups(model)


@pytest.fixture(scope="session")
def cnn_ranges(prepared_cnn):
    from trt_mpq.calib import CalibConfig, calibrate

    x = models.cnn_inputs(64)
    return calibrate(prepared_cnn[0], [{"input": x[i:i + 16]} for i in range(0, 64, 16)],
                     CalibConfig(), progress=False)


@pytest.fixture(scope="session")
def transformer_ranges(prepared_transformer):
    from trt_mpq.calib import CalibConfig, calibrate

    x = models.transformer_inputs(64)
    return calibrate(prepared_transformer[0], [{"input": x[i:i + 16]} for i in range(0, 64, 16)],
                     CalibConfig(), progress=False)


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> Path:
    """The small CNN trained on scikit-learn digits (needs torch)."""
    pytest.importorskip("torch")
    import digits_task

    return digits_task.train_and_export(tmp_path_factory.mktemp("digits") / "digits_cnn.onnx")


def run_ort(model_or_path, feed) -> list[np.ndarray]:
    import onnxruntime as ort

    from trt_mpq.backends.ort import QDQ_DISABLED_OPTIMIZERS

    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS)).run(None, feed)
