import models
import onnx
import pytest

from trt_mpq.errors import ModelError
from trt_mpq.model import find_groups, load_model, prepare_model
from trt_mpq.model.load import name_nodes


def test_load_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        load_model(empty)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model|empty graph"):
        load_model(text)


def test_truncated_model_is_reported_as_corrupt(cnn_path, tmp_path):
    data = cnn_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_model(cut)


def test_prepare_model_is_cached_and_names_every_node(cnn_path, tmp_path):
    first = prepare_model(cnn_path, tmp_path)
    mtime = first.stat().st_mtime_ns
    again = prepare_model(cnn_path, tmp_path)
    assert again == first and again.stat().st_mtime_ns == mtime
    names = [n.name for n in onnx.load(str(first)).graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_name_nodes_fills_missing_and_duplicate_names(cnn_path):
    model = onnx.load(str(cnn_path))
    model.graph.node[0].name = ""
    model.graph.node[2].name = model.graph.node[1].name
    named = name_nodes(model)
    names = [n.name for n in named.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert model.graph.node[0].name == ""  # the argument is not modified


def test_groups_share_activation_input_and_count_macs(prepared_cnn):
    _, model, groups = prepared_cnn
    assert [g.name for g in groups] == ["conv0", "conv_a", "conv2", "fc"]
    pair = groups[1]
    assert pair.op_names == ("conv_a", "conv_b") and pair.op_type == "Conv"
    # conv0: 16 out channels x 16x16 output x (3 in x 3x3 kernel)
    assert groups[0].macs == 16 * 16 * 16 * 3 * 3 * 3
    assert groups[0].params == 16 * 3 * 3 * 3 + 16
    assert groups[-1].macs == 32 * 10  # Gemm with transB: K=32, N=10


def test_transformer_groups(prepared_transformer):
    _, _, groups = prepared_transformer
    names = [g.name for g in groups]
    assert names[0] in ("q_proj", "k_proj", "v_proj") and len(groups[0].ops) == 3
    assert {"out_proj", "ffn_in", "ffn_out", "head"} <= set(names)
    # attention MatMuls between two activations are not quantizable groups
    assert not any(n in ("scores", "context") for g in groups for n in g.op_names)


def test_model_without_quantizable_layer_is_a_model_error(tmp_path):
    path = models.no_quantizable(tmp_path / "noq.onnx")
    with pytest.raises(ModelError, match="no quantizable layer"):
        find_groups(onnx.load(str(path)))
