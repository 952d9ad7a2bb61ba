"""`trt-mpq search`: the command line (or a request file) -> a `SearchRequest`, run by the
library (`pipeline.job.run_request`), and the answer in two lines."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from trt_mpq import options
from trt_mpq.cli import settings
from trt_mpq.cli.exits import EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_OK
from trt_mpq.errors import ConfigError


def search_request(args: argparse.Namespace):
    """The request of this command line: its flags, or --request FILE (with at most --out and
    --resume beside it)."""
    from trt_mpq.pipeline.request import OutputConfig, SearchRequest

    values = settings.values(args)
    if args.request is None:
        if not args.model:
            raise ConfigError("give a MODEL (a zoo name, `trt-mpq zoo`, or an .onnx file) or "
                              "--request FILE")
        return SearchRequest.from_options(args.model, values)
    if args.model:
        raise ConfigError("--request FILE names its own model; give either MODEL and flags, "
                          "or --request FILE")
    extra = sorted(set(values) - {"out", "resume"})
    if extra:
        raise ConfigError(f"--request FILE holds every setting of the search; only --out and "
                          f"--resume go with it, not --{extra[0]}")
    try:
        data = json.loads(Path(args.request).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read --request {args.request}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"--request {args.request} is not JSON: {e}") from None
    request = SearchRequest.from_json_dict(data)
    out = options.coerce(_output_option("out"), values["out"]) if "out" in values \
        else request.output.out
    return replace(request, output=OutputConfig(out=out, resume=bool(values.get("resume"))))


def _output_option(key: str) -> options.Option:
    from trt_mpq.pipeline.request import OutputConfig

    return next(o for o in options.options_of(OutputConfig) if o.key == key)


def cmd_search(args: argparse.Namespace) -> int:
    from trt_mpq.pipeline.job import REQUEST_FILE, SearchInterrupted, run_request

    request = search_request(args)
    try:
        out, result = run_request(request, settings.progress(args), argv=sys.argv[1:])
    except SearchInterrupted as e:
        print(f"\ninterrupted: {e.saved} evaluation(s) are saved in {e.out}; continue with\n"
              f"  trt-mpq search --request {e.out / REQUEST_FILE} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(result, out, request.search.confidence))
    return EXIT_OK if result["best"] else EXIT_BUDGET


def summary(result: dict, out: Path, confidence: float | None) -> str:
    """The answer (or its absence) in a few lines."""
    best = result["best"]
    timing = result.get("timing_check")
    untrusted = ("; timing NOT trusted on this machine (report.md says why)"
                 if timing and not timing["trusted"] else "")
    if not best:
        return (f"budget NOT met: no quantized plan faster than the baseline stayed within "
                f"{result['budget']['describe']} on search and holdout"
                + (f" (certified at {100 * confidence:g}% confidence)"
                   if confidence is not None else "")
                + f"; frontier and report in {out}" + untrusted)
    options = "".join(f", {k}={v}" for k, v in sorted(best["runtime_options"].items()))
    ci = ("(95% CI {:.3f}-{:.3f}) ".format(*best["latency_ratio_ci"])
          if best.get("latency_ratio_ci") else "")
    judged = (result.get("holdout_tests") or {}).get("judged") or 1
    bound = (f"(<= {100 * best['holdout_rel_drop_upper']:+.2f}% at "
             f"{100 * best['confidence']:g}% confidence over the {judged} plan(s) the holdout "
             f"judged, certified on {best['holdout_samples_used']} of {best['holdout_n']} "
             "samples) " if best.get("holdout_rel_drop_upper") is not None else "")
    return (f"budget met: {best['precision_counts']}{options} -> latency "
            f"x{best['latency_ratio']:.3f} {ci}of baseline "
            f"({result['baseline']['latency_ms']:.3f} -> {best['latency_ms']:.3f} ms), "
            f"holdout drop {100 * best['holdout_rel_drop']:+.2f}% {bound}"
            f"({result['evaluations']} plans, {result['wall_s']:.0f} s){untrusted}"
            f"\n  {out / best['artifact']}\n  {out / 'report.md'}")


__all__ = ["cmd_search", "search_request", "summary"]
