"""Model stage: load and validate ONNX, prepare it once, find the quantizable groups."""

from trt_mpq.graph import Edge
from trt_mpq.model.groups import Group, find_groups, group_edges
from trt_mpq.model.load import load_model, model_digest, prepare_model

__all__ = ["Edge", "Group", "find_groups", "group_edges", "load_model", "model_digest",
           "prepare_model"]
