"""`trt-mpq serve`: the search service (trt_mpq.serve) on uvicorn."""

from __future__ import annotations

import sys

from trt_mpq.cli import settings
from trt_mpq.cli.exits import EXIT_OK
from trt_mpq.errors import ConfigError
from trt_mpq.pipeline.folders import check_writable


def _token(args) -> str | None:
    import os

    if args.token and args.token_file:
        raise ConfigError("give --token or --token-file, not both")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {args.token_file}: cannot read a token from it "
                              f"({type(e).__name__})") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file}: its first line is empty")
        return token
    if args.token:
        print("trt-mpq serve: warning: --token is visible to every user of this machine (ps, "
              "/proc); prefer --token-file FILE or $TRT_MPQ_TOKEN", file=sys.stderr)
        return args.token
    return os.environ.get("TRT_MPQ_TOKEN") or None


def cmd_serve(args) -> int:
    import importlib.util
    import ipaddress
    import os

    from trt_mpq.pipeline.request import ExecutorConfig
    from trt_mpq.serve.bodies import timed_protocol
    from trt_mpq.serve.housekeeping import lock_root
    from trt_mpq.serve.service import ServeConfig

    token = _token(args)
    host = args.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(f"--host {host} is reachable from other machines: give a token "
                          "(--token-file FILE, or $TRT_MPQ_TOKEN) so that every request must "
                          "carry it")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.tasks_dir is not None and not args.tasks_dir.is_dir():
        raise ConfigError(f"--tasks-dir {args.tasks_dir} is not a folder")
    if args.max_upload_mb <= 0 or args.gpus < 0:
        raise ConfigError("--max-upload-mb must be > 0 and --gpus >= 0")
    if args.max_concurrent_uploads < 1 or args.max_queued < 1:
        raise ConfigError("--max-concurrent-uploads and --max-queued must be >= 1")
    if not (args.max_disk_gb >= 0 and args.retention_days >= 0 and args.request_timeout > 0):
        raise ConfigError("--max-disk-gb and --retention-days must be >= 0 and "
                          "--request-timeout > 0")
    executor = ExecutorConfig(kind=args.executor, ray_address=args.ray_address)
    if executor.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray: pip install 'trt-mpq[ray]'")
    cache = settings.cache_dir(args)
    root = args.root or cache / "serve"
    check_writable(root, "--root", folder=True)
    lock = lock_root(root)  # held until this process ends: one server per root
    env = dict(os.environ, TRT_MPQ_CACHE=str(cache))
    env.pop("TRT_MPQ_TOKEN", None)  # the searches have no use for it
    config = ServeConfig(
        root=root, env=env, tasks_dir=args.tasks_dir, token=token,
        max_upload_bytes=int(args.max_upload_mb * 2**20), gpus=args.gpus, port=args.port,
        allowed_hosts=frozenset(args.allowed_host), executor=executor,
        max_concurrent_uploads=args.max_concurrent_uploads, max_queued=args.max_queued,
        max_disk_bytes=int(args.max_disk_gb * 2**30) if args.max_disk_gb else None,
        retention_days=args.retention_days, request_timeout=args.request_timeout)
    import uvicorn

    from trt_mpq.serve.app import create_app

    print(f"trt-mpq serve: http://{host}:{args.port}/{'?token=...' if token else ''} "
          f"(jobs in {root}; Ctrl-C stops, running jobs resume at the next start)", flush=True)
    try:
        uvicorn.run(create_app(config), host=host, port=args.port,
                    log_level="warning" if not args.verbose else "info", access_log=False,
                    http=timed_protocol(args.request_timeout), timeout_keep_alive=5,
                    h11_max_incomplete_event_size=16 * 1024, limit_concurrency=512)
    finally:
        lock.close()
    return EXIT_OK
