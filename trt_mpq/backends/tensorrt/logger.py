"""The TensorRT logger the builder and runtime get: it keeps every line (the builder's layer
report arrives at VERBOSE), for the census and for error messages."""

from __future__ import annotations

import logging

log = logging.getLogger("trt_mpq.backends.tensorrt")


class _Logger:
    """A TensorRT logger that keeps every line (the layer report arrives at VERBOSE)."""

    def __new__(cls, trt):
        class Capture(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.lines: list[tuple[str, str]] = []

            def log(self, severity, msg):
                self.lines.append((str(severity).split(".")[-1], msg))
                if str(severity).endswith(("ERROR", "INTERNAL_ERROR")):
                    log.debug("TensorRT: %s", msg)

            def errors(self) -> list[str]:
                return [m for s, m in self.lines if s in ("ERROR", "INTERNAL_ERROR")]

            def text(self) -> list[str]:
                return [m for _, m in self.lines]

        return Capture()


__all__ = ["_Logger"]
