"""Running out of memory never crashes a run: an OOM injected at each stage (media decoding, the processor, the
model's prefill, mid-decode, the --dump-features forward) becomes a clear error record through every front door,
the memory it held is let go, and the next request runs normally. A bug that is not an OOM stays a bug."""

from __future__ import annotations

import functools
import json
import threading
import time
import weakref
from types import SimpleNamespace

import httpx
import pytest
import torch

import vlm_app.media
import vlm_app.runtime
from vlm_app.cli import main
from vlm_app.errors import OutOfMemory
from vlm_app.service import MemoryGuard, Run, execute, is_out_of_memory, one_turn, out_of_memory_message
from ui_fixtures import _free_port

FAST = ["--max-new-tokens", "4", "--device", "cpu"]
TorchOOM = torch.cuda.OutOfMemoryError  # torch.OutOfMemoryError from torch 2.5 on (the same class)
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
            "1.20 GiB is free.")


@pytest.fixture
def releases(monkeypatch) -> list[int]:
    """Counts `runtime.release_memory` calls (it still runs)."""
    calls = []
    release = vlm_app.runtime.release_memory

    def counting():
        calls.append(1)
        release()
    monkeypatch.setattr(vlm_app.runtime, "release_memory", counting)
    return calls


def fail_forward(monkeypatch, adapter, on_call: int = 1, error=lambda: TorchOOM(CUDA_OOM),
                 when=lambda kwargs: True) -> dict:
    """Every model of `adapter`'s class raises `error()` on its `on_call`-th matching forward (1: the prefill).
    Returns a dict whose `scratch` weakly references a tensor the failing call held, and `calls` (a counter)."""
    model_class = type(adapter.model)
    forward = model_class.forward
    state = {"calls": 0, "scratch": None}

    @functools.wraps(forward)  # generate checks its keywords against forward's signature
    def failing(self, *args, **kwargs):
        if when(kwargs):
            state["calls"] += 1
            if state["calls"] == on_call:
                scratch = torch.ones(256, 1024)  # stands in for activations the failed step allocated
                state["scratch"] = weakref.ref(scratch)
                raise error()
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(model_class, "forward", failing)
    return state


def fail_load_video(monkeypatch, name: str):
    """`load_video` raises MemoryError for sources ending in `name`."""
    load_video = vlm_app.media.load_video

    def failing(source, *args, **kwargs):
        if str(source).endswith(name):
            raise MemoryError()
        return load_video(source, *args, **kwargs)
    monkeypatch.setattr(vlm_app.media, "load_video", failing)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, make_clip):
    return make_clip(tmp_path_factory.mktemp("oom") / "clip.mp4", 2.0, 12, 96, 64)


# ---- the CLI ----------------------------------------------------------------------------------------------------
def test_folder_run_records_each_oom_and_goes_on(tiny_checkpoints, smol_adapter, make_clip, tmp_path, monkeypatch,
                                                 capsys, releases):
    folder = tmp_path / "videos"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        make_clip(folder / name, 2.0, 12, 96, 64)
    fail_forward(monkeypatch, smol_adapter, on_call=1)  # a.mp4's prefill
    fail_load_video(monkeypatch, "b.mp4")
    out = tmp_path / "results.jsonl"
    assert main(["describe", str(folder), "--model", str(tiny_checkpoints["smolvlm2"]), "--out", str(out),
                 *FAST]) == 0
    records = {json.loads(line)["source"].rsplit("/", 1)[-1]: json.loads(line) for line in out.open()}
    assert records["a.mp4"]["error"].startswith("out of memory on cuda:0 while reading the prompt (prefill; ")
    assert "allocating 2.00 GiB failed" in records["a.mp4"]["error"] and "--max-pixels" in records["a.mp4"]["error"]
    assert records["a.mp4"]["answer"] is None and records["a.mp4"]["num_visual_tokens"] > 0  # what it was shown
    assert records["b.mp4"]["error"].startswith("out of memory in RAM while preparing the inputs")
    assert records["c.mp4"]["error"] is None and isinstance(records["c.mp4"]["answer"], str)
    assert "described 1 video(s), 2 failed" in capsys.readouterr().err
    assert len(releases) == 2


def test_single_describe_exits_2_with_the_message(tiny_checkpoints, qwen_adapter, clip, monkeypatch, capsys):
    processor_class = type(qwen_adapter.processor)

    def failing(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 23.6 GiB")
    monkeypatch.setattr(processor_class, "__call__", failing)
    assert main(["describe", str(clip), "--model", str(tiny_checkpoints["qwen2_5_vl"]), "--fps", "1", *FAST]) == 2
    captured = capsys.readouterr()
    assert ("\nerror: out of memory on cuda:0 while preparing the inputs (decoding the media, the processor): "
            "allocating 1.50 GiB failed. To fit: ") in "\n" + captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_streamed_describe_stops_mid_answer_with_the_message(tiny_checkpoints, smol_adapter, clip, monkeypatch,
                                                             capsys):
    fail_forward(monkeypatch, smol_adapter, on_call=4)  # the prefill and two tokens went through
    assert main(["describe", str(clip), "--model", str(tiny_checkpoints["smolvlm2"]), "--stream",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out.strip()  # the answer so far was shown
    assert "error: out of memory on cuda:0 while generating the answer (" in captured.err
    assert "Traceback" not in captured.err


def test_dump_features_oom_is_a_clear_error(tiny_checkpoints, qwen_adapter, clip, tmp_path, monkeypatch, capsys):
    fail_forward(monkeypatch, qwen_adapter, when=lambda kwargs: kwargs.get("output_hidden_states"))
    dump = tmp_path / "features.safetensors"
    assert main(["describe", str(clip), "--model", str(tiny_checkpoints["qwen2_5_vl"]), "--fps", "1", "--json",
                 "--dump-features", str(dump), *FAST]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] is None  # the description itself fit
    assert "error: out of memory on cuda:0 while computing every layer's hidden states (--dump-features)" in captured.err
    assert not dump.exists() and "Traceback" not in captured.err


def test_compare_records_the_oom_model_and_runs_the_next(tiny_checkpoints, qwen_adapter, clip, monkeypatch, capsys):
    fail_forward(monkeypatch, qwen_adapter)
    models = f"{tiny_checkpoints['qwen2_5_vl']},{tiny_checkpoints['smolvlm2']}"
    assert main(["compare", str(clip), "--models", models, "--fps", "1", "--json", *FAST]) == 0
    qwen, smol = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert qwen["error"].startswith("out of memory on cuda:0 while reading the prompt")
    assert smol["error"] is None and isinstance(smol["answer"], str)


# ---- the request layer ------------------------------------------------------------------------------------------
def test_execute_records_the_oom_releases_its_memory_and_the_next_request_runs(smol_adapter, clip, monkeypatch,
                                                                               releases):
    failure = fail_forward(monkeypatch, smol_adapter, on_call=2)
    run = Run(smol_adapter, one_turn("Describe.", str(clip), generation={"max_new_tokens": 4}))
    inputs = weakref.ref(run.prepare().inputs["pixel_values"])
    record = run.execute()
    assert record["error"].startswith("out of memory on cuda:0 while ")
    assert record["frames_indices"] and record["num_tokens"]["visual"] > 0
    assert isinstance(run.error, OutOfMemory) and isinstance(run.error.__cause__, TorchOOM)
    assert run.prepared.inputs == {} and inputs() is None  # the inputs on the device are gone
    assert failure["scratch"]() is None  # and so is what the failed step held (its frames were cleared)
    assert len(releases) == 1
    again = execute(smol_adapter, one_turn("Describe.", str(clip), generation={"max_new_tokens": 4}))
    assert again["error"] is None and again["timings"]["new_tokens"] >= 1


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)"),
                                   ValueError("out of memory"), KeyError("pixel_values")])
def test_a_bug_stays_a_bug(smol_adapter, clip, monkeypatch, releases, error):
    fail_forward(monkeypatch, smol_adapter, error=lambda: error)
    with pytest.raises(type(error)):
        execute(smol_adapter, one_turn("Describe.", str(clip), generation={"max_new_tokens": 4}))
    assert releases == []


@pytest.mark.parametrize("error, device, where", [
    (TorchOOM("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 1 has a total capacity of 8 GiB"),
     "cuda:0", "on cuda:1"),  # a model spread over GPUs: the one torch names
    (RuntimeError("CUDA error: out of memory"), "cuda:0", "on cuda:0"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"), "mps", "on mps"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "cuda:0", "on cuda:0"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "cuda:0", "on cuda:0"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)"), "cuda:0", "in RAM"),
    (MemoryError(), "cuda:0", "in RAM"),
    (TorchOOM("boom"), "cpu", "in RAM"),
])
def test_what_counts_as_out_of_memory(error, device, where):
    assert is_out_of_memory(error)
    message = out_of_memory_message("the forward pass", torch.device(device), error)
    assert message.startswith(f"out of memory {where} while the forward pass")
    if "1073741824" in str(error):
        assert ": allocating 1073741824 bytes failed." in message


@pytest.mark.parametrize("error", [RuntimeError("Expected all tensors to be on the same device"),
                                   ValueError("out of memory"), KeyboardInterrupt()])
def test_what_does_not(error):
    assert not is_out_of_memory(error)
    with pytest.raises(type(error)), MemoryGuard("the forward pass", "cuda:0"):
        raise error


def test_release_memory_empties_the_accelerator_caches(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append("cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append("mps"))
    vlm_app.runtime.release_memory()
    assert emptied == ["cuda", "mps"]


def test_ray_stages_record_the_oom(tiny_checkpoints, smol_adapter, clip, monkeypatch):
    """The Ray engine's two stages, in this process: decoding (the workers' own `load_media`) and the model replica
    (`service.execute`)."""
    from vlm_app.distributed import Decoder, Describer, Job

    question = one_turn("Describe.", str(clip), generation={"max_new_tokens": 4})
    job = Job(model=str(tiny_checkpoints["smolvlm2"]), question=question, model_options={"device": "cpu"}).located()
    fail_load_video(monkeypatch, "bad.mp4")
    decoded = Decoder(job)({"source": "bad.mp4", "location": str(clip.parent / "bad.mp4")})
    assert decoded["video"] is None and decoded["error"].startswith("out of memory in RAM while decoding the video")
    decoded = Decoder(job)({"source": str(clip), "location": str(clip)})
    fail_forward(monkeypatch, smol_adapter)
    record = json.loads(Describer(job)(decoded)["record"])
    assert record["source"] == str(clip) and record["error"].startswith("out of memory on cuda:0 while reading")


# ---- the web app ------------------------------------------------------------------------------------------------
def test_ui_chat_shows_the_message(tiny_checkpoints, smol_adapter, ui_clip, tmp_path, monkeypatch):
    from vlm_app.ui.answer import ERROR_TITLE
    from vlm_app.ui.backend import Backend
    from vlm_app.ui.chat import ChatHandlers
    from vlm_app.ui.limits import UploadPolicy

    policy = UploadPolicy(max_file_mb=1, max_duration_s=6, upload_dir=str(ui_clip.parent))
    backend = Backend([str(tiny_checkpoints["smolvlm2"])], policy, str(tmp_path / "votes.jsonl"), device="cpu")
    try:
        fail_forward(monkeypatch, smol_adapter)
        history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(ui_clip)}},
                                                {"type": "text", "text": "Describe."}]}]
        outputs = list(ChatHandlers(backend).respond(SimpleNamespace(session_hash="s1"), history, backend.models[0],
                                                     True, *[None] * 5, 4, 0.0, 1.0, 0, ""))
        shown = outputs[-1][0][-1]
        assert shown["metadata"]["title"] == ERROR_TITLE
        assert shown["content"].startswith("out of memory on cuda:0 while reading the prompt")
    finally:
        backend.close()


# ---- the OpenAI server ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_api(tiny_checkpoints, clip):
    """The server app in this process (so a test can make its model fail), on 127.0.0.1."""
    import uvicorn

    from vlm_app.media.limits import Limits
    from vlm_app.server.app import ServerConfig, create_app

    model = str(tiny_checkpoints["smolvlm2"])
    config = ServerConfig(models=[model], limits=Limits.for_remote_clients(allowed_dirs=[str(clip.parent)]),
                          load_options={"device": "cpu"})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v1", model=model)
    server.should_exit = True
    thread.join()


def chat_body(api, clip, **extra) -> dict:
    return {"model": api.model, "max_tokens": 4, **extra,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                                      {"type": "text", "text": "Describe."}]}]}


def test_server_answers_an_openai_error_and_is_not_retried(local_api, smol_adapter, clip, monkeypatch):
    import openai

    failure = fail_forward(monkeypatch, smol_adapter)
    client = openai.OpenAI(base_url=local_api.url, api_key="unused", max_retries=2, timeout=60)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**chat_body(local_api, clip))
    assert raised.value.status_code == 507 and failure["calls"] == 1  # x-should-retry: false, so asked once
    error = raised.value.body
    assert error["code"] == "out_of_memory" and error["type"] == "server_error"
    assert error["message"].startswith("out of memory on cuda:0 while reading the prompt")
    answer = client.chat.completions.create(**chat_body(local_api, clip))  # the server goes on serving
    assert answer.choices[0].message.content is not None


def test_server_stream_ends_with_an_error_event(local_api, smol_adapter, clip, monkeypatch):
    fail_forward(monkeypatch, smol_adapter, on_call=2)
    with httpx.stream("POST", f"{local_api.url}/chat/completions", json=chat_body(local_api, clip, stream=True),
                      timeout=60) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "out_of_memory" and "out of memory on cuda:0 while" in error["message"]
