"""Model stage: load and validate ONNX, prepare it once, find the quantizable groups."""

from trt_mpq.model.groups import Group, find_groups
from trt_mpq.model.load import load_model, model_digest, prepare_model

__all__ = ["Group", "find_groups", "load_model", "model_digest", "prepare_model"]
