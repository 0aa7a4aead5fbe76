"""Serve Wan2.2 video generation over HTTP: an OpenAI-style API and a web page on one persistent job queue.

    python serve.py                                    # t2v-tiny on the CPU, http://127.0.0.1:8000/
    python serve.py --task t2v-A14B --ckpt_dir ./Wan2.2-T2V-A14B --preset fast --save_dir /data/videos
    python serve.py --host 0.0.0.0 --api_key KEY       # reachable from other machines: a key is required

The model flags are generate.py's; the generation flags (--size, --sample_steps, ...) become the defaults
of every request. The model loads once, before the port opens. Jobs and videos live in --save_dir; a
restart resumes what a crash interrupted. Bad flags exit with code 2 and one line, as generate.py's do.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import generate
from wan.config import REPO_ROOT
from wan.errors import BAD_INPUT, ConfigError
from wan.service.requests import Limits

logger = logging.getLogger("serve")

CLI_ONLY = ("prompt", "prompt_file", "save_file")
"""generate.py flags that name one run's prompt or files: the service takes prompts over HTTP and names its files."""
SERVE_FLAGS = (
    "host",
    "port",
    "api_key",
    "lora_folder",
    "max_queue",
    "max_prompt_chars",
    "max_body_bytes",
    "max_image_bytes",
    "save_dir",
)
DEFAULT_SAVE_DIR = Path("outputs") / "service"


def build_parser() -> argparse.ArgumentParser:
    """generate.py's flags (model, levers, generation defaults) and the service's own."""
    p = generate.build_parser()
    p.description = "Wan2.2 video service: HTTP API (/v1/videos, docs at /docs) and a web page (/) on one job queue"
    for action in p._actions:  # argparse has no public way to hide or re-word an inherited flag
        if action.dest in CLI_ONLY:
            action.help = argparse.SUPPRESS
        if action.dest == "save_dir":
            action.help = f"where the job table and the videos live (default: {DEFAULT_SAVE_DIR})"
    for group in p._action_groups:
        if any(action.dest == "save_dir" for action in group._group_actions):
            group.title = "output"
    limits = Limits()
    s = p.add_argument_group("service")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api_key",
        default=os.environ.get("WAN_API_KEY"),
        help="every request needs 'Authorization: Bearer KEY' (the page: any user name, KEY as password); "
        "required when --host is not a loopback address (default: $WAN_API_KEY)",
    )
    s.add_argument(
        "--lora_folder",
        default=str(REPO_ROOT / "models" / "loras"),
        help="the folder whose .safetensors LoRAs requests may name (default: the shipped models/loras)",
    )
    s.add_argument(
        "--max_queue", type=int, default=limits.max_queue, help="queued jobs before 429 (default %(default)s)"
    )
    s.add_argument("--max_prompt_chars", type=int, default=limits.max_prompt_chars, help="(default %(default)s)")
    s.add_argument("--max_body_bytes", type=int, default=limits.max_body_bytes, help="(default %(default)s)")
    s.add_argument(
        "--max_image_bytes",
        type=int,
        default=limits.max_image_bytes,
        help="largest image upload (POST /v1/images, the page's image input; default %(default)s)",
    )
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve_flags(args: argparse.Namespace) -> None:
    """What only the service refuses, before anything loads."""
    for name in CLI_ONLY:
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name} is generate.py's; the service takes prompts over HTTP (POST /v1/videos)")
    if args.ulysses_size > 1 or args.cfg_parallel or args.dit_fsdp or args.t5_fsdp:
        raise ConfigError(
            "serve.py runs one process on one device; --ulysses_size/--cfg_parallel/--*_fsdp are not for it"
        )
    if not is_loopback(args.host) and not args.api_key:
        raise ConfigError(f"--host {args.host} is reachable from other machines; pass --api_key KEY (or WAN_API_KEY)")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be 0 to 65535")
    for name in ("max_queue", "max_prompt_chars", "max_body_bytes", "max_image_bytes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be at least 1")


def model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """generate.py's flags as the engine and the request defaults take them."""
    return {k: v for k, v in vars(args).items() if k not in SERVE_FLAGS}


def open_from_args(args: argparse.Namespace):
    """The started job service (model loaded, worker running) for these flags; ``ConfigError`` for bad ones."""
    from wan.service.jobs import open_service

    check_serve_flags(args)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_image_bytes=args.max_image_bytes,
        max_prompt_chars=args.max_prompt_chars,
        max_queue=args.max_queue,
    )
    save_dir = Path(args.save_dir) if args.save_dir else DEFAULT_SAVE_DIR
    return open_service(model_flags(args), save_dir, Path(args.lora_folder), limits)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from wan.service.app import create_app

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        service = open_from_args(args)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(service, args.api_key)
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host  # every address: use a name
    shown = f"[{shown}]" if ":" in shown else shown
    logger.info(
        "open http://%s:%d/ in a browser (API: /v1/videos, docs: /docs; jobs and videos in %s)",
        shown,
        args.port,
        service.store.path.parent,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
