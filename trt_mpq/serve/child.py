"""What the server runs in a child process, started as `python -m trt_mpq.serve.child --parent
PID ...`: the child first asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG,
kept across exec) and checks that its parent is still the server, then

- `search ARGS`: becomes `python -m trt_mpq search ARGS` (exec: the same process, so a server
  killed with -9 leaves no search timing in the background), or
- `check-onnx FILE`: checks an uploaded file (parsed here, not in the server: a large or hostile
  protobuf costs this process's memory, never the server's) and prints why it is not a usable
  model, or nothing.

The server never forks with a `preexec_fn` (ctypes in a forked child of a threaded process);
the child sets its own death signal. It is tied to the server thread that started it (the
kernel's rule), which waits for it.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies; exit now if it already has (we were re-parented)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the server's stop still interrupts us
        pass
    if os.getppid() != parent:
        sys.exit(f"trt-mpq serve child: its server (PID {parent}) is gone")


def _tensors_outside(model) -> bool:
    """Whether any tensor of the model (subgraphs included) keeps its data in another file."""
    import onnx

    def graphs(g):
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from graphs(sub)

    for g in graphs(model.graph):
        tensors = [*g.initializer, *(s.values for s in g.sparse_initializer)]
        for node in g.node:
            tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
            tensors += [t for a in node.attribute if a.type == onnx.AttributeProto.TENSORS
                        for t in a.tensors]
        if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
               for t in tensors):
            return True
    return False


def check_onnx_file(path: str) -> str:
    """'' if the file is a self-contained ONNX model with a graph that passes onnx's checker,
    else why not."""
    import onnx

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        return f"it does not parse as an ONNX protobuf ({type(e).__name__})"
    if not model.graph.node:
        return "its graph has no nodes"
    if _tensors_outside(model):
        return ("it keeps tensors in external data files; upload a self-contained model "
                "(onnx.save_model(model, path, save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError
        return f"onnx's checker refused it: {str(e).splitlines()[0][:300]}"
    return ""


def run_check(path, timeout_s: float = 300.0) -> str:
    """(In the server) `check_onnx_file` in a child: '' or why the upload is refused."""
    import subprocess

    try:
        r = subprocess.run([sys.executable, "-m", "trt_mpq.serve.child", "--parent",
                            str(os.getpid()), "check-onnx", str(path)], capture_output=True,
                           text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"checking it took over {timeout_s:g} s"
    if r.returncode != 0:
        return f"the check of it stopped (exit code {r.returncode})"
    return r.stdout.strip()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--parent" or not argv[1].isdigit():
        print("usage: python -m trt_mpq.serve.child --parent PID (search ARGS | check-onnx "
              "FILE)", file=sys.stderr)
        return 2
    die_with_parent(int(argv[1]))
    what, rest = argv[2], argv[3:]
    if what == "search":
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "trt_mpq", "search", *rest])
    if what == "check-onnx" and len(rest) == 1:
        print(check_onnx_file(rest[0]))
        return 0
    print(f"trt-mpq serve child: unknown task {what!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
