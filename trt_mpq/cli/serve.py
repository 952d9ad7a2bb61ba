"""`trt-mpq serve`: the search service (trt_mpq.serve) on uvicorn."""

from __future__ import annotations

from trt_mpq.cli import settings
from trt_mpq.cli.exits import EXIT_OK
from trt_mpq.errors import ConfigError
from trt_mpq.pipeline.folders import check_writable


def cmd_serve(args) -> int:
    import ipaddress
    import os

    from trt_mpq.serve import ServeConfig, create_app

    token = args.token or os.environ.get("TRT_MPQ_TOKEN") or None
    host = args.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(f"--host {host} is reachable from other machines: give --token (or "
                          "set TRT_MPQ_TOKEN) so that every request must carry it")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.tasks_dir is not None and not args.tasks_dir.is_dir():
        raise ConfigError(f"--tasks-dir {args.tasks_dir} is not a folder")
    if args.max_upload_mb <= 0 or args.gpus < 0:
        raise ConfigError("--max-upload-mb must be > 0 and --gpus >= 0")
    cache = settings.cache_dir(args)
    root = args.root or cache / "serve"
    check_writable(root, "--root", folder=True)
    env = dict(os.environ, TRT_MPQ_CACHE=str(cache))
    env.pop("TRT_MPQ_TOKEN", None)  # the searches have no use for it
    config = ServeConfig(root=root, env=env, tasks_dir=args.tasks_dir, token=token,
                         max_upload_bytes=int(args.max_upload_mb * 2**20), gpus=args.gpus)
    import uvicorn

    print(f"trt-mpq serve: http://{host}:{args.port}/{'?token=...' if token else ''} "
          f"(jobs in {root}; Ctrl-C stops, running jobs resume at the next start)", flush=True)
    uvicorn.run(create_app(config), host=host, port=args.port,
                log_level="warning" if not args.verbose else "info")
    return EXIT_OK
