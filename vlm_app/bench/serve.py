"""`python -m vlm_app bench serve`: the OpenAI-compatible server under 1, 4 and 16 concurrent streaming clients,
one job at a time and batched (`--max-batch`, a second server started the same way), and its overhead against
calling the adapter directly.

The server is started as a user starts it (`python -m vlm_app serve`, its own process, loopback); clients stream
the same video question over HTTP. Reported per concurrency: requests/s, p50/p99 time to first token (as the
client sees it: queueing included) and p50 request time. The overhead is measured at concurrency 1, interleaving
one server request with one direct call (`adapter.prepare` + `adapter.stream` in this process, same model, same
request, same torch threads): the median of the per-pair ratios (target <= 1.05). Default model: a tiny SmolVLM2
built on the spot, on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONCURRENCY = (1, 4, 16)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model: str, folder: Path, port: int, threads: int, log: Path, max_batch: int = 1) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", model, "--port", str(port),
               "--allow-dir", str(folder), "--max-queue", "64", "--device", "cpu", "--max-batch", str(max_batch)]
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start within 120 s")


def _streamed_request(http, url: str, body: dict) -> tuple[float, float]:
    """(time to first content piece, total time) of one streaming request."""
    started = time.perf_counter()
    first = None
    with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - started
    return first if first is not None else float("nan"), time.perf_counter() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _concurrent(url: str, body: dict, clients: int, per_client: int) -> dict:
    import httpx

    results: list[tuple[float, float]] = []
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=600) as http:
            for _ in range(per_client):
                result = _streamed_request(http, url, body)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ttfts = [ttft for ttft, _ in results]
    return {"clients": clients, "requests": len(results), "requests_per_s": len(results) / elapsed,
            "ttft_p50_s": _percentile(ttfts, 0.5), "ttft_p99_s": _percentile(ttfts, 0.99),
            "request_p50_s": _percentile([total for _, total in results], 0.5)}


def run_serve_benchmark(model: str | None, max_new_tokens: int, repeats: int, threads: int,
                        as_json: bool = False, max_batch: int = 8) -> int:
    import httpx
    import torch

    from vlm_app.bench.adapter import paired_times
    from vlm_app.runtime import load_adapter
    from vlm_app.testing.tiny import build_tiny
    from vlm_app.testing.videos import make_clip

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="vlm_app_bench_serve_") as scratch:
        scratch = Path(scratch)
        clip = make_clip(scratch / "clip.mp4", 2.0, 12, 320, 240)
        model = model or str(build_tiny("smolvlm2", scratch / "tiny_smolvlm2"))
        port = _free_port()
        server = _start_server(model, scratch, port, threads, scratch / "server.log")
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            served = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
            body = {"model": served, "max_tokens": max_new_tokens, "stream": True,
                    "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                                              {"type": "text", "text": "Describe this video."}]}]}
            adapter = load_adapter(model, device="cpu")
            messages = [{"role": "user", "content": [{"type": "video", "video": str(clip)},
                                                     {"type": "text", "text": "Describe this video."}]}]

            def direct():
                prepared = adapter.prepare(messages, max_new_tokens=max_new_tokens)
                return list(adapter.stream(prepared, max_new_tokens=max_new_tokens))

            with httpx.Client(timeout=600) as http:
                overhead = paired_times(lambda: _streamed_request(http, url, body), direct, repeats)
            rows = [_concurrent(url, body, clients, per_client=max(2, 8 // clients)) for clients in CONCURRENCY]
        finally:
            server.terminate()
            server.wait(timeout=30)
        server = _start_server(model, scratch, port, threads, scratch / "batched.log", max_batch)
        try:
            with httpx.Client(timeout=600) as http:
                _streamed_request(http, url, body)  # the model loads on its first request: not measured
            batched = [_concurrent(url, body, clients, per_client=max(2, 8 // clients)) for clients in CONCURRENCY]
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratio = 1.0 + overhead["overhead"]
    if as_json:
        print(json.dumps({"model": model, "max_new_tokens": max_new_tokens, "threads": threads,
                          "server_s": overhead["ours"], "direct_s": overhead["plain"], "ratio": ratio, "rows": rows,
                          "max_batch": max_batch, "batched_rows": batched}))
        return 0
    print(f"bench serve: model {model}, {max_new_tokens} new tokens, 2 s 320x240 clip, torch threads {threads}, "
          f"{os.cpu_count()} CPUs")
    print(f"concurrency 1, {repeats} interleaved pairs: server {overhead['ours'] * 1e3:.1f} ms vs direct adapter "
          f"{overhead['plain'] * 1e3:.1f} ms per request -> {ratio:.3f}x (target <= 1.05x)")
    print(f"{'clients':>8} {'requests':>9} {'req/s':>7} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'request p50 ms':>15}")
    for label, table in (("one job at a time (--max-batch 1)", rows), (f"batched (--max-batch {max_batch})", batched)):
        print(label)
        for row in table:
            print(f"{row['clients']:>8} {row['requests']:>9} {row['requests_per_s']:>7.2f} "
                  f"{row['ttft_p50_s'] * 1e3:>12.1f} {row['ttft_p99_s'] * 1e3:>12.1f} "
                  f"{row['request_p50_s'] * 1e3:>15.1f}")
    for alone, together in zip(rows, batched):
        print(f"{alone['clients']:>2} client(s): batched/one-at-a-time throughput "
              f"{together['requests_per_s'] / alone['requests_per_s']:.2f}x (target >= 1.5x at 4+), p50 TTFT "
              f"{together['ttft_p50_s'] / alone['ttft_p50_s']:.2f}x (target <= 1.2x at 1)")
    return 0
