"""Every TensorRT attribute, enum member and method the backend uses exists in the bindings of
each supported TensorRT version (read from the `tensorrt-cu13-bindings` wheels, never loaded:
no GPU or TensorRT library needed) and in the installed TensorRT-RTX.

CI downloads the wheels into .ci/trt-bindings (see .ci/run) and sets TRT_MPQ_BINDINGS to it;
elsewhere these tests skip unless the folder is there."""

import importlib.util
import os
from pathlib import Path

import pytest

from trt_mpq.backends.tensorrt import surface

ROOT = Path(__file__).parents[2]
BINDINGS = Path(os.environ.get("TRT_MPQ_BINDINGS", ROOT / ".ci" / "trt-bindings"))
WHEELS = sorted(BINDINGS.glob("tensorrt_*bindings-*.whl")) if BINDINGS.is_dir() else []


def test_the_backend_uses_what_we_think_it_uses():
    used = surface.used_names("tensorrt", 10)
    for name in ("execute_async_v3", "create_engine_inspector", "execution_context",
                 "set_input_shape", "nvtx_verbosity", "STRONGLY_TYPED", "dynamic_range",
                 "OBEY_PRECISION_CONSTRAINTS", "get_engine_information"):
        assert name in used, name
    assert "ComputeCapability" not in used  # TensorRT-RTX only
    assert "ComputeCapability" in surface.used_names("tensorrt-rtx", 1)
    assert "OBEY_PRECISION_CONSTRAINTS" not in surface.used_names("tensorrt", 11)  # weak: 10


def test_a_misspelled_attribute_is_caught():
    used = surface.used_in_source("def f(builder, trt):\n"
                                  "    network = builder.create_netwrk(0)\n"
                                  "    return trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED\n")
    assert used == {"create_netwrk": 2, "NetworkDefinitionCreationFlag": 3, "STRONGLY_TYPED": 3}
    available = {"create_network", "NetworkDefinitionCreationFlag", "STRONGLY_TYPED"}
    assert surface.missing({k: str(v) for k, v in used.items()}, available) == {
        "create_netwrk": "2"}


def test_names_from_a_compiled_module_include_tails_of_merged_strings():
    data = b"\0reset_dynamic_range\0execute_async_v3\0not an identifier\0"
    names = surface._names_from_binary(data)
    assert {"set_dynamic_range", "execute_async_v3"} <= names
    assert "not an identifier" not in names and "identifier" not in names


def _need_wheels():
    if not WHEELS:
        if os.environ.get("TRT_MPQ_BINDINGS"):
            pytest.fail(f"TRT_MPQ_BINDINGS={BINDINGS} holds no tensorrt bindings wheel")
        pytest.skip("no TensorRT bindings wheels here (.ci/run downloads them)")


@pytest.mark.parametrize("wheel", WHEELS or [None], ids=lambda w: w.name if w else "none")
def test_every_used_name_exists_in_each_supported_tensorrt(wheel):
    _need_wheels()
    major = surface.wheel_version(wheel)[0]
    gone = surface.missing(surface.used_names("tensorrt", major), surface.binding_names(wheel))
    assert gone == {}, f"{wheel.name} lacks {gone}"


def test_the_check_sees_removals_between_versions():
    """Weak typing's API is gone in TensorRT 11: checking the 10.x code paths against 11.x must
    report it (so the check is not vacuous)."""
    _need_wheels()
    eleven = [w for w in WHEELS if surface.wheel_version(w)[0] >= 11]
    if not eleven:
        pytest.skip("no TensorRT 11 wheel")
    gone = surface.missing(surface.used_names("tensorrt", 10), surface.binding_names(eleven[-1]))
    assert "OBEY_PRECISION_CONSTRAINTS" in gone


def test_every_used_name_exists_in_the_installed_tensorrt_rtx():
    spec = importlib.util.find_spec("tensorrt_rtx_bindings")
    if spec is None:
        pytest.skip("TensorRT-RTX is not installed")
    package = Path(spec.origin).parent
    gone = surface.missing(surface.used_names("tensorrt-rtx", 1), surface.binding_names(package))
    assert gone == {}
