"""`trt-mpq <verb>`: parse, build the library's config objects, call the library. Nothing more.

The parser is `cli.parser`; the commands are `cli.commands`, `cli.search` and `cli.serve`;
exit codes (`cli.exits`), one meaning each: 0 ok; 1 the answer is "no"; 2 user error (clear
message, no traceback); 3 internal error (a bug: one line, the traceback saved to a file, -v
prints it); 130 interrupted (evaluations so far are saved; --resume continues).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from trt_mpq.cli.exits import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER
from trt_mpq.cli.parser import build_parser
from trt_mpq.errors import TrtMpqError

log = logging.getLogger("trt_mpq.cli")


# -- logging -----------------------------------------------------------------------------------
class _TqdmHandler(logging.Handler):
    """Log lines that do not tear progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity <= 0 else
                                           "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger("trt_mpq")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _commands() -> dict:
    from trt_mpq.cli import commands
    from trt_mpq.cli.search import cmd_search
    from trt_mpq.cli.serve import cmd_serve

    return {"zoo": commands.cmd_zoo, "inspect": commands.cmd_inspect,
            "calibrate": commands.cmd_calibrate, "evaluate": commands.cmd_evaluate,
            "search": cmd_search, "build": commands.cmd_build,
            "sensitivity": commands.cmd_sensitivity, "report": commands.cmd_report,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage error (2, message printed) or --help (0)
        return EXIT_USER if e.code else EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USER
    configure_logging(args.verbose - args.quiet)
    try:
        return _commands()[args.command](args)
    except TrtMpqError as e:
        if args.verbose:  # -v: the whole story, the user's own frames included
            import traceback

            traceback.print_exception(e, file=sys.stderr)
        print(f"trt-mpq {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `trt-mpq inspect MODEL | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - anything else is a bug in trt-mpq
        return _internal_error(args, e)


def _internal_error(args, e: Exception) -> int:
    """A bug: one line that says so, the traceback in a file (and on stderr with -v)."""
    import traceback

    text = "".join(traceback.format_exception(e))
    saved = ""
    try:
        from trt_mpq.task import default_cache_dir

        folder = (Path(getattr(args, "opt_cache_dir", None) or getattr(args, "cache_dir", None)
                       or default_cache_dir()) / "crashes")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"trt-mpq {' '.join(sys.argv[1:])}\n\n{text}")
        saved = f"; traceback in {path}"
    except Exception:  # noqa: BLE001 - reporting a bug must not raise another
        pass
    if args.verbose:
        print(text, file=sys.stderr, end="")
    print(f"trt-mpq {args.command}: internal error: {type(e).__name__}: "
          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''} -- this is a bug in "
          f"trt-mpq, not in your input{saved} (-v prints it); please report it with the "
          "command line", file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
