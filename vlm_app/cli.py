"""Command line: `python -m vlm_app <command>`.

Each command has one `_add_<command>` function (its flags) and one `_run_<command>` function (a thin call into
the library). Heavy imports (torch, transformers, gradio) happen inside the handlers so `--help` stays fast.
User mistakes raise `VlmAppError`; `main` prints them without a traceback and returns 2.
"""

from __future__ import annotations

import argparse
import sys

from vlm_app.adapters.registry import FAMILIES
from vlm_app.errors import OptionsError, VlmAppError

EXIT_USER_ERROR = 2


class ListFlag(argparse.Action):
    """A list-valued flag: `--models a,b`, `--models a b`, mixes and repeats all give ["a", "b"]."""

    def __init__(self, option_strings, dest, nargs="+", **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items += [item.strip() for value in values for item in value.split(",") if item.strip()]
        setattr(namespace, self.dest, items)


def positive(text: str) -> float:
    """An operator's size, time or count flag: a finite number above 0."""
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return number


def batch_count(text: str) -> int:
    """A batch size: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def non_negative(text: str) -> float:
    """A wait: a finite number of at least 0."""
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text!r}")
    return number


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Video sampling overrides, named after qwen-vl-utils' options. Unset means the model's policy decides."""
    group = parser.add_argument_group("video sampling (defaults come from the model's policy)")
    group.add_argument("--fps", type=float, help="frames per second to sample")
    group.add_argument("--nframes", type=int, help="exact number of frames (instead of --fps)")
    group.add_argument("--min-frames", type=int)
    group.add_argument("--max-frames", type=int)
    group.add_argument("--policy", default=None,
                       help="the family's sampling policy (Qwen3-VL: qwen3_vl, the processor's own route, the default; "
                            "qwen3_vl_utils, qwen-vl-utils with image_patch_size=16)")
    group.add_argument("--min-pixels", type=int, help="per-frame pixel floor (qwen3_vl: of the whole video)")
    group.add_argument("--max-pixels", type=int, help="per-frame pixel cap (qwen3_vl: frames x height x width)")
    group.add_argument("--cap-pixels-per-frame", action="store_const", const=True, default=None,
                       help="qwen3_vl: cap each frame's pixels as qwen-vl-utils does (off unless the checkpoint sets it)")
    group.add_argument("--total-pixels", type=int, help="pixel budget over all frames")
    group.add_argument("--start", type=float, dest="video_start", help="clip start, seconds")
    group.add_argument("--end", type=float, dest="video_end", help="clip end, seconds")
    group.add_argument("--backend", choices=["auto", "pyav", "decord", "torchcodec"], default=None,
                       help="video decoder (default: auto, PyAV first)")
    group.add_argument("--audio", choices=["auto", "on", "off"], default=None,
                       help="the video's own soundtrack, for models that hear (Gemma 4 E2B/E4B): auto (their default) "
                            "when the file has one, on, or off (video only, as the model cards call them)")
    group.add_argument("--resize", choices=["exact", "fast"], default=None,
                       help="exact: the reference's float32 resize, compiled (default); fast: torch's uint8 kernel, "
                            "about 2x cheaper still, pixels may differ by a few levels")


SAMPLING_KEYS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "video_start", "video_end", "backend", "resize", "policy", "cap_pixels_per_frame", "audio")


def _add_memory_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory (the pre-flight estimates each request's peak before decoding)")
    group.add_argument("--max-memory", metavar="BYTES|auto", default=None,
                       help="the peak a request may reach on the model's device: bytes, a size (12GB, 512MiB) or "
                            "auto (the default: free GPU memory, or 80%% of the available RAM; on --engine ray, "
                            "the smallest the model replicas measure); over it, videos are lowered to fit, pixels "
                            "per frame first, then frames (the record's notes say so)")
    group.add_argument("--no-fit", action="store_true",
                       help="keep the reference sampling budget even over --max-memory")


def sampling_options(args: argparse.Namespace) -> dict:
    """The sampling options the user actually set, as keyword arguments for `load_video`."""
    return {key: getattr(args, key) for key in SAMPLING_KEYS if getattr(args, key, None) is not None}


def memory_limit(args: argparse.Namespace):
    """--max-memory (unset: auto) and --no-fit as a `memory.MemoryLimit`."""
    from vlm_app.memory import MemoryLimit

    return MemoryLimit(args.max_memory or "auto", not args.no_fit)


def _add_inspect(sub) -> None:
    parser = sub.add_parser("inspect", help="show what a model would be shown from a video (no weights loaded)")
    parser.add_argument("video", help="path, file:// or http(s):// URL")
    parser.add_argument("--model", default=None, help="family or model name (default: every family)")
    _add_sampling_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--contact-sheet", metavar="PNG", help="write a grid of the sampled frames")
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from vlm_app.inspect import run_inspect

    return run_inspect(args.video, args.model, sampling_options(args), args.contact_sheet, args.json)


def _add_bench(sub) -> None:
    parser = sub.add_parser("bench", help="benchmarks that print ratios against references measured in the same run")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    _add_bench_sampling(benches)
    _add_bench_adapter(benches)
    _add_bench_model(benches)
    _add_bench_batch(benches)
    _add_bench_serve(benches)
    _add_bench_memory(benches)
    _add_bench_chapters(benches)


def _add_bench_sampling(benches) -> None:
    parser = benches.add_parser("sampling", help="our load_video vs qwen-vl-utils vs the decode floor")
    parser.add_argument("videos", nargs="*", help="videos to measure (default: generated camera-like 720p/1080p/long "
                        "clips at real bitrates, plus Debian's real clips when installed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--qps", type=float, default=None, help="also run the 1 fps load test at this request rate")
    parser.add_argument("--requests", type=int, default=100, help="requests in the load test")
    parser.set_defaults(handler=_run_bench_sampling)


def _run_bench_sampling(args: argparse.Namespace) -> int:
    from vlm_app.bench.sampling import run_sampling_benchmark

    return run_sampling_benchmark(args.videos, rounds=args.rounds, qps=args.qps, requests=args.requests)


def _add_ui(sub) -> None:
    parser = sub.add_parser("ui", help="start the web app (chat and compare over videos)")
    parser.add_argument("--models", action=ListFlag, default=None, metavar="MODEL",
                        help="models on offer (a,b or a b): short names, hub ids or checkpoint folders, each as "
                             "NAME=MODEL to show it as NAME (default: a folder by its name; smolvlm2-256m)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (0.0.0.0 for all; any non-loopback host needs --auth)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true",
                        help="also open a temporary public gradio.live link (needs --auth)")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login")
    parser.add_argument("--auth-file", default=None, metavar="FILE",
                        help="require one of these logins: a file of USER:PASSWORD lines (keeps them out of `ps`)")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow a non-loopback --host or --share without a login (trusted networks only)")
    parser.add_argument("--max-upload-mb", type=positive, default=200.0, help="largest accepted upload")
    parser.add_argument("--max-duration", type=positive, default=600.0,
                        help="longest video one answer takes, seconds (longer ones go in Chapters)")
    parser.add_argument("--max-chapters-duration", type=positive, default=4 * 3600.0, metavar="SECONDS",
                        help="longest video a Chapters run takes (default 4 h)")
    parser.add_argument("--allow-dir", action=ListFlag, default=[], metavar="DIR",
                        help="folders whose files may be named by path or file:// URL (a,b or a b; repeatable)")
    parser.add_argument("--allow-host", action=ListFlag, default=[], metavar="HOST",
                        help="hosts whose URLs may be fetched although they are loopback, private or link-local "
                             "(a,b or a b; repeatable)")
    _add_lora_option(parser)
    parser.add_argument("--votes", default="vlm_app_votes.jsonl", help="JSONL log of blind-comparison votes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--memory-budget-gb", type=positive, default=None,
                        help="unload least recently used models beyond this (default: 90%% of GPU / half of RAM)")
    _add_memory_options(parser)
    parser.set_defaults(handler=_run_ui)


def _run_ui(args: argparse.Namespace) -> int:
    from vlm_app.adapters.registry import DEFAULT_MODEL
    from vlm_app.ui.app import auth_pairs, serve

    return serve(args.models or [DEFAULT_MODEL], args.host, args.port, share=args.share,
                 auth=auth_pairs(args.auth, args.auth_file), insecure_no_auth=args.insecure_no_auth,
                 max_upload_mb=args.max_upload_mb, max_duration_s=args.max_duration,
                 max_chapters_duration_s=args.max_chapters_duration, allow_dirs=tuple(args.allow_dir),
                 allow_hosts=tuple(args.allow_host), votes_path=args.votes, device=args.device, dtype=args.dtype,
                 memory_budget_gb=args.memory_budget_gb, loras=args.lora, memory=memory_limit(args))


def _add_serve(sub) -> None:
    parser = sub.add_parser("serve", help="start the OpenAI-compatible HTTP API (/v1/chat/completions)")
    parser.add_argument("--models", action=ListFlag, required=True, metavar="MODEL",
                        help="models on offer (only these load; a,b or a b): short names, hub ids or checkpoint "
                             "folders, each as NAME=MODEL to serve it as NAME (default: a hub id as itself, a folder "
                             "by its folder's name; clients never see a local path)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (non-loopback needs --api-key)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="clients must send 'Authorization: Bearer KEY'")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="allow a non-loopback --host without --api-key (anyone who reaches it may use it)")
    parser.add_argument("--allow-dir", action=ListFlag, default=[], metavar="DIR",
                        help="folders whose files clients may name as file:// URLs (a,b or a b; repeatable)")
    parser.add_argument("--allow-host", action=ListFlag, default=[], metavar="HOST",
                        help="hosts clients may name in media URLs even if loopback or private (a,b or a b; "
                             "repeatable)")
    parser.add_argument("--max-body-mb", type=positive, default=16.0, help="largest accepted request body")
    parser.add_argument("--max-media-mb", type=positive, default=512.0, help="largest video or image a client may name")
    parser.add_argument("--body-timeout", type=positive, default=10.0, help="seconds a request body may take to arrive")
    _add_lora_option(parser)
    parser.add_argument("--max-queue", type=int, default=8, help="requests that may wait for the model (then 429)")
    parser.add_argument("--max-batch", type=batch_count, default=1, metavar="N",
                        help="generate up to N concurrent requests for the same model in one batch (each still "
                             "streams and cancels on its own; the memory limit may make batches smaller; default 1: "
                             "one request at a time)")
    parser.add_argument("--batch-wait-ms", type=non_negative, default=0.0, metavar="MS",
                        help="with --max-batch: how long a batch's first request waits for others to arrive (default "
                             "0; it always waits for those already preparing their media)")
    parser.add_argument("--keepalive", type=positive, default=15.0, metavar="SECONDS",
                        help="a stream with nothing new for this long gets an SSE comment line, so proxies keep it "
                             "open and a client that left is noticed (default 15)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--memory-budget-gb", type=positive, default=None,
                        help="unload least recently used models beyond this (default: 90%% of GPU / half of RAM)")
    _add_memory_options(parser)
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from vlm_app.media.limits import Limits
    from vlm_app.server import serve, server_config

    mib = 2**20
    limits = Limits.for_remote_clients(allowed_dirs=args.allow_dir, allowed_hosts=args.allow_host,
                                       max_file_bytes=int(args.max_media_mb * mib))
    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30)
    config = server_config(args.models, args.lora, api_key=args.api_key, limits=limits,
                           max_body_bytes=int(args.max_body_mb * mib), body_seconds=args.body_timeout,
                           max_queue=args.max_queue, keepalive_seconds=args.keepalive, max_batch=args.max_batch,
                           batch_wait_ms=args.batch_wait_ms, load_options={"device": args.device, "dtype": args.dtype},
                           memory_budget_bytes=budget, memory=memory_limit(args))
    return serve(config, args.host, args.port, insecure_no_auth=args.insecure_no_auth)


def _add_model_options(parser: argparse.ArgumentParser, many: bool = False) -> None:
    group = parser.add_argument_group("model loading")
    if not many:
        group.add_argument("--model", default="smolvlm2-256m",
                           help="short name, hub id or local checkpoint folder (default: smolvlm2-256m)")
    group.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    group.add_argument("--dtype", default="auto",
                       help="auto (bf16 on GPUs that support it, else fp16; fp32 on CPU), bf16, fp16, fp32")
    group.add_argument("--attn", default="auto",
                       help="auto (flash_attention_2 where it runs: fp16/bf16, compute capability >= 8.0, "
                            "flash-attn importable; else sdpa), sdpa, eager, flash_attention_2")
    group.add_argument("--quantize", choices=["4bit", "8bit"], default=None, help="bitsandbytes loading (CUDA)")
    group.add_argument("--adapter", dest="lora_adapter", metavar="PATH",
                       help="a peft LoRA adapter: a folder or a hub id (not merged)")
    group.add_argument("--merge", action="store_true",
                       help="fold the --adapter into the model's weights once (faster; the record says merged)")
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def model_options(args: argparse.Namespace) -> dict:
    return {"device": args.device, "dtype": args.dtype, "attn": args.attn, "quantization": args.quantize,
            "lora_adapter": args.lora_adapter, "revision": args.revision, **({"merge": True} if args.merge else {})}


def _add_lora_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action=ListFlag, default=None, metavar="NAME=PATH",
                        help="peft LoRA adapters on offer as models of their own, NAME=PATH (a folder or hub id; "
                             "a,b or a b; repeatable): each goes on the model of --models its adapter_config.json "
                             "names, which loads once with all its adapters, switched per request")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", default=None, help="the question or instruction (default: 'Describe this video.')")
    group.add_argument("--template", default=None,
                       help="prompt template: describe, summarize, timeline, qa (fills {question} from --prompt), or a file")
    group.add_argument("--max-new-tokens", type=int, default=256)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--json-schema", default=None, metavar="FILE",
                       help="answer in JSON valid under this JSON schema file (constrained decoding), e.g. a list of "
                            "the people, objects and events with their times")
    group.add_argument("--logprobs", type=int, default=None, metavar="N",
                       help="record each answer token's log-probability and its N (0-20) likeliest alternatives "
                            "(the --json record's logprobs)")
    group.add_argument("--frequency-penalty", type=float, default=None,
                       help="-2 to 2: lower a token's logit by this for each time it was generated (OpenAI's)")
    group.add_argument("--presence-penalty", type=float, default=None,
                       help="-2 to 2: lower a token's logit by this once it was generated (OpenAI's)")
    group.add_argument("--repetition-penalty", type=float, default=None,
                       help="above 1 discourages repeating prompt or answer tokens (transformers' multiplicative one)")


def generation_options(args: argparse.Namespace) -> dict:
    decoding = {"frequency_penalty": args.frequency_penalty, "presence_penalty": args.presence_penalty,
                "repetition_penalty": args.repetition_penalty}
    if args.logprobs is not None:
        decoding.update(logprobs=True, top_logprobs=args.logprobs)
    if args.json_schema is not None:
        decoding["json_schema"] = _read_json_schema(args.json_schema)
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "seed": args.seed, **{key: value for key, value in decoding.items() if value is not None}}


def _read_json_schema(path: str) -> dict:
    import json

    try:
        return json.loads(open(path, encoding="utf-8").read())
    except OSError as error:
        raise OptionsError(f"--json-schema {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise OptionsError(f"--json-schema {path} is not JSON ({error})") from None


def _add_describe(sub) -> None:
    parser = sub.add_parser("describe", help="describe a video (or image), URL or folder of videos with a model")
    parser.add_argument("source", help="video or image file, file:// or http(s):// URL, a folder (recursive), or "
                                       "a .txt list of videos (one path or URL per line)")
    _add_model_options(parser)
    _add_generation_options(parser)
    _add_sampling_options(parser)
    _add_memory_options(parser)
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object per video")
    parser.add_argument("--out", metavar="JSONL",
                        help="write one JSON line per video to this file (started afresh unless --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="keep --out and skip every video already in it, failed ones too (delete a line to "
                             "redo that video)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="like --resume, but first drop the failed records from --out and describe those again")
    parser.add_argument("--dump-features", metavar="SAFETENSORS",
                        help="also save hidden states of every layer and the visual-token map (single video)")
    parser.add_argument("--boxes-out", metavar="PNG",
                        help="for an image source: draw the answer's grounding boxes (DeepSeek-VL2) onto it")
    parser.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                        help="longest video one request takes (default 4 h; longer ones go in --chapters, up to 24 h)")
    parser.add_argument("--batch-size", type=batch_count, default=1, metavar="N",
                        help="a folder or list: generate up to N videos' answers in one batch (same answers as one "
                             "by one when greedy; the memory limit may make batches smaller; default 1)")
    _add_chapter_options(parser)
    _add_ray_options(parser)
    parser.set_defaults(handler=_run_describe)


def _add_chapter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chapters (long videos: one request per segment, then a summary)")
    group.add_argument("--chapters", action="store_true",
                       help="split the video into consecutive segments, describe each (its prompt names its time "
                            "range), merge them into chapters from 0 to the end and summarise them")
    group.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                       help="segment length (default: what one request of the model shows, max frames / fps, "
                            "within 60..240 s)")
    group.add_argument("--overlap", type=float, default=None, metavar="S",
                       help="seconds each segment also samples of the next (default 0)")
    group.add_argument("--chapters-out", action=ListFlag, default=None, metavar="PATH",
                       help="write the chapters to these files, format by suffix: .json, .srt, .vtt (a,b or a b; "
                            "repeatable)")


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out (--engine ray: a folder or a list file, needs --out)")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process; ray: a Ray Data pipeline (pip install -e \".[ray]\")")
    group.add_argument("--address", default=None,
                       help="Ray cluster: auto (this node's cluster) or ray://host:10001 (default: start a local Ray)")
    group.add_argument("--decode-workers", type=int, default=None,
                       help="CPU actors decoding videos (default: the cluster's CPUs minus one per model replica)")
    group.add_argument("--model-replicas", type=int, default=1, help="model actors, each loads the model once")
    group.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per model actor (0: CPU)")


def _run_describe(args: argparse.Namespace) -> int:
    from vlm_app.describer import Output, run_describe, run_on_ray
    from vlm_app.runtime import ModelChoice

    chapters = _chapter_options(args)
    output = Output(args.out, args.resume, args.retry_failed, args.json, args.stream, args.dump_features,
                    args.boxes_out, tuple(args.chapters_out or ()))
    model = ModelChoice(args.model, model_options(args))
    question = _describe_question(args, chapters is not None)
    if args.engine == "ray":
        if chapters is not None or args.max_duration is not None:
            raise OptionsError("--chapters and --max-duration work with --engine local, not with --engine ray (yet)")
        from vlm_app.distributed import Cluster

        cluster = Cluster(address=args.address, decode_workers=args.decode_workers,
                          model_replicas=args.model_replicas, gpus_per_replica=args.gpus_per_replica)
        return run_on_ray(model, question, output, cluster, args.batch_size)
    return run_describe(model, question, output, chapters, args.batch_size)


def _question(args: argparse.Namespace, prompt: str | None = None, limits=None):
    """The `service.Request` the flags ask of the source: `prompt` (default: --prompt or --template), sampling,
    generation, media `limits` and the memory limit."""
    from vlm_app.prompts import resolve_prompt
    from vlm_app.service import one_turn

    return one_turn(prompt or resolve_prompt(args.prompt, args.template), args.source, sampling_options(args),
                    generation_options(args), limits, memory=memory_limit(args))


def _describe_question(args: argparse.Namespace, chapters: bool):
    """`_question` for describe: in chapters, the chapters prompt unless one is given; --max-duration's limits."""
    from vlm_app.chapters import DEFAULT_PROMPT as CHAPTERS_PROMPT
    from vlm_app.media import DEFAULT_LIMITS

    prompt = CHAPTERS_PROMPT if chapters and not (args.prompt or args.template) else None
    limits = None if args.max_duration is None else DEFAULT_LIMITS.with_overrides(
        max_duration_seconds=args.max_duration)
    return _question(args, prompt, limits)


def _chapter_options(args: argparse.Namespace):
    """--chapters, --segment-seconds and --overlap as a `chapters.ChapterOptions` (None without --chapters); the
    exports --chapters-out names are checked here, before any model loads."""
    from vlm_app.chapters import ChapterOptions, check_exports

    given = [flag for flag, value in (("--segment-seconds", args.segment_seconds), ("--overlap", args.overlap),
                                      ("--chapters-out", args.chapters_out)) if value]
    if not args.chapters:
        if given:
            raise OptionsError(f"{given[0]} goes with --chapters")
        return None
    check_exports(args.chapters_out or [])
    return ChapterOptions(args.segment_seconds, args.overlap or 0.0)


def _add_compare(sub) -> None:
    parser = sub.add_parser("compare", help="run several models on one video and compare answers and costs")
    parser.add_argument("source", help="video file or URL")
    parser.add_argument("--models", action=ListFlag, required=True, metavar="MODEL",
                        help="model names, hub ids or folders (a,b or a b)")
    _add_model_options(parser, many=True)
    _add_generation_options(parser)
    _add_sampling_options(parser)
    _add_memory_options(parser)
    _add_lora_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from vlm_app.describer import run_compare

    return run_compare(args.models, _question(args), model_options(args), args.lora, args.json)


def _add_tiny(sub) -> None:
    parser = sub.add_parser("tiny", help="write a tiny random-weight checkpoint (offline, deterministic)")
    parser.add_argument("--family", required=True,
                        help=f"{', '.join(FAMILIES)}, or a family's variant (an unknown name lists them all)")
    parser.add_argument("--out", required=True, help="folder to write (hub layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-files", metavar="DIR",
                        help="a real hub repository's text files (tokenizer, chat template, processor and config "
                             "files): kept as they are, with a shrunk config and random weights")
    parser.add_argument("--lora", metavar="DIR", help="also write a random LoRA adapter for the checkpoint here")
    parser.set_defaults(handler=_run_tiny)


def _run_tiny(args: argparse.Namespace) -> int:
    _check_checkpoint_folder(args.out)
    if args.lora:
        _check_checkpoint_folder(args.lora, "--lora", "adapter_config.json")
    print(_write_tiny(args))
    if args.lora:
        from vlm_app.testing.lora import build_tiny_lora

        print(build_tiny_lora(args.out, args.lora, seed=args.seed))
    return 0


def _write_tiny(args: argparse.Namespace):
    if args.from_files:
        from vlm_app.testing.real_files import build_from_files

        return build_from_files(args.family, args.from_files, args.out, seed=args.seed)
    from vlm_app.testing.tiny import build_tiny

    return build_tiny(args.family, args.out, seed=args.seed)


def _check_checkpoint_folder(out: str, flag: str = "--out", marker: str = "config.json") -> None:
    """Where a checkpoint (or adapter) may be written: a new or empty folder, or an earlier one's (it is rewritten),
    which holds `marker`."""
    from pathlib import Path

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OptionsError(f"{flag} {out} is a file; give a folder to write in")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise OptionsError(f"{flag} {out} holds other files; give a new or empty folder (or an earlier output's, "
                           "to rewrite it)")


def _add_bench_adapter(benches) -> None:
    parser = benches.add_parser("adapter", help="our adapter vs the plain transformers calls (overhead ratio)")
    parser.add_argument("--models", action=ListFlag, default=None, metavar="MODEL",
                        help="checkpoints, a,b or a b (default: tiny Qwen2.5-VL and SmolVLM2 built on the spot)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads during the measurement")
    parser.set_defaults(handler=_run_bench_adapter)


def _run_bench_adapter(args: argparse.Namespace) -> int:
    from vlm_app.bench.adapter import run_adapter_benchmark

    return run_adapter_benchmark(args.models, repeats=args.repeats, max_new_tokens=args.max_new_tokens,
                                 threads=args.threads)


def _add_bench_model(benches) -> None:
    parser = benches.add_parser("model", help="prefill/decode speed and peak memory of a real-size model")
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--size", required=True,
                        help="a published size of the family (its module's real_sizes; an unknown size lists them)")
    parser.add_argument("--random-weights", action="store_true", required=True,
                        help="build from the published config with random weights (no download)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--frames", type=int, default=8, help="frames in the synthetic video prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_run_bench_model)


def _run_bench_model(args: argparse.Namespace) -> int:
    from vlm_app.bench.model import run_model_benchmark

    return run_model_benchmark(args.family, args.size, args.device, args.dtype, args.frames, args.max_new_tokens,
                               args.json)


def _add_bench_batch(benches) -> None:
    parser = benches.add_parser("batch", help="a folder at batch sizes 1/4/8 (throughput, memory); --ray: "
                                              "sequential vs a local Ray")
    parser.add_argument("--videos", type=int, default=None, help="generated clips to describe (default 16; --ray 12)")
    parser.add_argument("--seconds", type=int, default=None, help="length of each clip (default 30; --ray 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(default 128; --ray 16)")
    parser.add_argument("--batch-sizes", action=ListFlag, default=None, metavar="N",
                        help="batch sizes to compare, the first is the reference (default 1,4,8)")
    parser.add_argument("--size", default="256m", help="real-size random-weight SmolVLM2 to build (default 256m)")
    parser.add_argument("--model", default=None, help="checkpoint (default: real-size random-weight SmolVLM2; "
                                                      "--ray: a tiny SmolVLM2 built on the spot)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--ray", action="store_true", help="the older comparison: sequential vs a local Ray")
    parser.set_defaults(handler=_run_bench_batch)


def _run_bench_batch(args: argparse.Namespace) -> int:
    from vlm_app.bench.batch import run_batch_benchmark, run_batching_benchmark

    if args.ray:
        return run_batch_benchmark(args.videos or 12, args.seconds or 4, args.max_new_tokens or 16, args.model)
    sizes = tuple(batch_count(size) for size in args.batch_sizes or ("1", "4", "8"))
    return run_batching_benchmark(args.videos or 16, args.seconds or 30, args.max_new_tokens or 128, sizes,
                                  args.model, args.size, args.threads)


def _add_bench_serve(benches) -> None:
    parser = benches.add_parser("serve", help="the HTTP server under 1/4/16 streaming clients; overhead vs the adapter")
    parser.add_argument("--model", default=None, help="checkpoint (default: a tiny SmolVLM2 built on the spot)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved server/direct pairs at concurrency 1")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, in the server and here")
    parser.add_argument("--max-batch", type=batch_count, default=8,
                        help="the batched server's --max-batch, compared with one job at a time (default 8)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_run_bench_serve)


def _run_bench_serve(args: argparse.Namespace) -> int:
    from vlm_app.bench.serve import run_serve_benchmark

    return run_serve_benchmark(args.model, args.max_new_tokens, args.repeats, args.threads, args.json,
                               args.max_batch)


def _add_bench_memory(benches) -> None:
    parser = benches.add_parser("memory", help="the memory pre-flight's estimate vs the measured peak, per request")
    parser.add_argument("--families", action=ListFlag, default=None, metavar="FAMILY",
                        help="qwen2_5_vl, smolvlm2, deepseek_vl2 (a,b or a b; default: all)")
    parser.add_argument("--clip-seconds", type=int, default=None, metavar="SECONDS",
                        help="only the requests on the clip of this length (40 or 600; default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_run_bench_memory)


def _run_bench_memory(args: argparse.Namespace) -> int:
    from vlm_app.bench.memory import run_memory_benchmark

    return run_memory_benchmark(args.families, args.device, args.json, args.clip_seconds)


def _add_bench_chapters(benches) -> None:
    parser = benches.add_parser("chapters", help="describe --chapters on 1 h and 2 h clips: peak RSS, wall time vs "
                                                 "the decode floor")
    parser.add_argument("--model", default=None, help="checkpoint (default: a tiny SmolVLM2 built on the spot)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.set_defaults(handler=_run_bench_chapters)


def _run_bench_chapters(args: argparse.Namespace) -> int:
    from vlm_app.bench.chapters import run_chapters_benchmark

    return run_chapters_benchmark(args.model, args.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_app", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(sub)
    _add_describe(sub)
    _add_compare(sub)
    _add_tiny(sub)
    _add_bench(sub)
    _add_ui(sub)
    _add_serve(sub)
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
