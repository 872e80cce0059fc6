"""Command line: `python -m vlm_app <command>`.

Each command has one `_add_<command>` function (its flags) and one `_run_<command>` function (a thin call into
the library). Heavy imports (torch, transformers, gradio) happen inside the handlers so `--help` stays fast.
User mistakes raise `VlmAppError`; `main` prints them without a traceback and returns 2.
"""

from __future__ import annotations

import argparse
import sys

from vlm_app.errors import VlmAppError

EXIT_USER_ERROR = 2


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Video sampling overrides, named after qwen-vl-utils' options. Unset means the model's policy decides."""
    group = parser.add_argument_group("video sampling (defaults come from the model's policy)")
    group.add_argument("--fps", type=float, help="frames per second to sample")
    group.add_argument("--nframes", type=int, help="exact number of frames (instead of --fps)")
    group.add_argument("--min-frames", type=int)
    group.add_argument("--max-frames", type=int)
    group.add_argument("--min-pixels", type=int, help="per-frame pixel floor")
    group.add_argument("--max-pixels", type=int, help="per-frame pixel cap")
    group.add_argument("--total-pixels", type=int, help="pixel budget over all frames")
    group.add_argument("--start", type=float, dest="video_start", help="clip start, seconds")
    group.add_argument("--end", type=float, dest="video_end", help="clip end, seconds")
    group.add_argument("--backend", choices=["auto", "pyav", "decord", "torchcodec"], default=None,
                       help="video decoder (default: auto, PyAV first)")


SAMPLING_KEYS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "video_start", "video_end", "backend")


def sampling_options(args: argparse.Namespace) -> dict:
    """The sampling options the user actually set, as keyword arguments for `load_video`."""
    return {key: getattr(args, key) for key in SAMPLING_KEYS if getattr(args, key, None) is not None}


def _add_inspect(sub) -> None:
    parser = sub.add_parser("inspect", help="show what a model would be shown from a video (no weights loaded)")
    parser.add_argument("video", help="path, file:// or http(s):// URL")
    parser.add_argument("--model", default=None, help="family or model name (default: every family)")
    _add_sampling_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--contact-sheet", metavar="PNG", help="write a grid of the sampled frames")
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from vlm_app.inspect import run_inspect_command

    return run_inspect_command(args, sampling_options(args))


def _add_bench(sub) -> None:
    parser = sub.add_parser("bench", help="benchmarks that print ratios against references measured in the same run")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    _add_bench_sampling(benches)


def _add_bench_sampling(benches) -> None:
    parser = benches.add_parser("sampling", help="our load_video vs qwen-vl-utils vs the decode floor")
    parser.add_argument("videos", nargs="*", help="videos to measure (default: generated 720p/1080p/long clips)")
    parser.set_defaults(handler=_run_bench_sampling)


def _run_bench_sampling(args: argparse.Namespace) -> int:
    from vlm_app.bench.sampling import run_sampling_benchmark

    return run_sampling_benchmark(args.videos)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_app", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except VlmAppError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
