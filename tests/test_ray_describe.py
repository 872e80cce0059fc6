"""`describe --engine ray`: a local Ray Data pipeline gives the sequential records, records failures, resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlm_app import distributed
from vlm_app.cli import main
from vlm_app.prompts import DEFAULT_PROMPT
from vlm_app.memory import AUTO_RAM_FRACTION, AVAILABLE_MEMORY_VARIABLE
from vlm_app.service import execute, one_turn
from vlm_app.messages import conversation

MAX_NEW_TOKENS = 8
GENERATION = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "top_p": 1.0, "seed": None}  # the CLI's defaults
REPRODUCIBILITY = ("source", "model", "answer", "error", "prompt", "frames_indices", "timestamps", "sample_fps",
                   "num_visual_tokens", "num_tokens", "sampling", "generation")


def ray_arguments(ray_videos, checkpoint, out, *extra) -> list[str]:
    return ["describe", str(ray_videos), "--engine", "ray", "--model", str(checkpoint), "--device", "cpu",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out), "--decode-workers", "1", *extra]


def ray_describe(ray_videos, checkpoint, out, *extra) -> int:
    return main(ray_arguments(ray_videos, checkpoint, out, *extra))


def local_describe(ray_videos, checkpoint, out, *extra) -> dict[str, dict]:
    assert main(["describe", str(ray_videos), "--model", str(checkpoint), "--device", "cpu", "--max-new-tokens",
                 str(MAX_NEW_TOKENS), "--out", str(out), *extra]) == 0
    return read_jsonl(out)


def read_jsonl(path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_source = {record["source"]: record for record in records}
    assert len(by_source) == len(records), "a video was described twice"
    return by_source


@pytest.fixture(scope="module")
def ray_run(ray_local, ray_videos, tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_out") / "results.jsonl"
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out) == 0
    return out


def test_records_equal_sequential_describe(ray_run, ray_videos, smol_adapter):
    records = read_jsonl(ray_run)
    videos = sorted(ray_videos.glob("*.mp4"))
    assert set(records) == {str(video) for video in videos}
    broken = records.pop(str(ray_videos / "broken.mp4"))
    assert broken["answer"] is None and "broken.mp4 is not a readable video" in broken["error"]
    answers = set()
    for source, record in records.items():
        expected = execute(smol_adapter, one_turn(DEFAULT_PROMPT, source, {}, GENERATION))
        assert record["error"] is None
        assert {key: record[key] for key in REPRODUCIBILITY} == {key: expected[key] for key in REPRODUCIBILITY}
        assert record["model_info"]["path"] == expected["model_info"]["path"]
        assert record["timings"]["new_tokens"] == expected["timings"]["new_tokens"]
        answers.add(record["answer"])
    assert len(answers) > 1, "the clips should not all get the same answer"


def test_resumed_run_does_no_work(ray_run, ray_videos, tiny_checkpoints, monkeypatch, capsys):
    before = ray_run.read_text()
    monkeypatch.setattr(distributed, "build_dataset", lambda *args: pytest.fail("a resumed run started Ray work"))
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], ray_run, "--resume") == 0
    assert ray_run.read_text() == before
    assert "described 0 video(s), 0 failed" in capsys.readouterr().err


def refuse_any_work(monkeypatch) -> None:
    from vlm_app import runtime

    monkeypatch.setattr(distributed, "build_dataset", lambda *args: pytest.fail("a resumed run started Ray work"))
    monkeypatch.setattr(runtime, "load_adapter", lambda *args, **options: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("changed", [("--model", "qwen2_5_vl"), ("--max-new-tokens", "3"), ("--fps", "2"),
                                     ("--prompt", "What moves?"), ("--temperature", "0.7")])
def test_resume_refuses_records_made_with_other_settings(ray_run, ray_videos, tiny_checkpoints, tmp_path,
                                                         monkeypatch, capsys, changed):
    """As the local engine refuses them, with the same check, before any model loads or Ray work starts."""
    out = tmp_path / "results.jsonl"
    out.write_text(ray_run.read_text())
    refuse_any_work(monkeypatch)
    option, value = changed
    if option == "--model":
        value = str(tiny_checkpoints[value])
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out, "--resume", option, value) == 2
    error = capsys.readouterr().err
    assert "holds records made with other settings" in error and "give another --out" in error
    assert out.read_text() == ray_run.read_text()


def test_parquet_resume_checks_settings_too(ray_run, ray_videos, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    """A Parquet output keeps nested fields as JSON text; they compare as the JSONL records do."""
    out = tmp_path / "results.parquet"
    parts = distributed.ParquetParts(out)
    parts.start(resume=False)
    for record in read_jsonl(ray_run).values():
        parts.add(record)
    parts.close()
    refuse_any_work(monkeypatch)
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out, "--resume") == 0
    assert "described 0 video(s), 0 failed" in capsys.readouterr().err
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out, "--resume", "--fps", "2") == 2
    assert "holds records made with other settings" in capsys.readouterr().err


def test_resume_finishes_an_interrupted_run(ray_run, ray_videos, tiny_checkpoints, tmp_path, capsys):
    finished = ray_run.read_text().splitlines()
    out = tmp_path / "interrupted.jsonl"
    out.write_text("\n".join(finished[:3]) + "\n" + finished[3][:20])  # three records and a torn fourth line
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out, "--resume", "--json") == 0
    captured = capsys.readouterr()
    assert "describe (ray): 100%" in captured.err  # the progress bar counts finished videos
    printed = [json.loads(line) for line in captured.out.splitlines()]
    kept = {json.loads(line)["source"] for line in finished[:3]}
    assert {record["source"] for record in printed} == set(read_jsonl(ray_run)) - kept
    redone = [json.loads(line) for line in out.read_text().splitlines()[3:] if line.startswith("{") and line.endswith("}")]
    assert {record["source"]: record["answer"] for record in redone} == \
        {source: record["answer"] for source, record in read_jsonl(ray_run).items() if source not in kept}


def test_retry_failed_replaces_only_the_failed_record(ray_run, ray_videos, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "retry.jsonl"
    out.write_text(ray_run.read_text())
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], out, "--retry-failed", "--json") == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["source"] for record in printed] == [str(ray_videos / "broken.mp4")]
    assert read_jsonl(out) == read_jsonl(ray_run) | {printed[0]["source"]: printed[0]}  # one line per video


def test_parquet_output_from_a_list_file_with_relative_paths(ray_local, ray_videos, tiny_checkpoints, ray_run,
                                                             tmp_path, monkeypatch):
    """Ray workers do not share the driver's working directory: relative paths must still work, and the records
    keep the names as given."""
    monkeypatch.chdir(ray_videos.parent)
    listed = [f"{ray_videos.name}/clip0.mp4", f"{ray_videos.name}/broken.mp4"]
    list_file = tmp_path / "videos.txt"
    list_file.write_text("# two videos\n" + "\n".join(listed) + "\n\n")
    out = tmp_path / "results.parquet"
    model = os.path.relpath(tiny_checkpoints["smolvlm2"])
    assert ray_describe(list_file, model, out) == 0
    rows = {row["source"]: row for row in distributed.read_parquet_records(out)}
    expected = read_jsonl(ray_run)[str(ray_videos / "clip0.mp4")]
    assert set(rows) == set(listed)
    assert rows[listed[0]]["answer"] == expected["answer"] and rows[listed[0]]["model"] == model
    assert json.loads(rows[listed[0]]["timings"])["new_tokens"] == expected["timings"]["new_tokens"]
    assert "broken.mp4 is not a readable video" in rows[listed[1]]["error"]


def assert_fitted_like_the_local_engine(ray: dict, local: dict, unconstrained: dict) -> None:
    """The same frames, notes, failures and limits; the widest clips lowered, at least one clip not."""
    assert set(ray) == set(local)
    for source in local:
        assert {key: ray[source][key] for key in ("frames_indices", "notes", "error")} == \
            {key: local[source][key] for key in ("frames_indices", "notes", "error")}, source
        if local[source]["error"] is None:
            assert ray[source]["max_memory_bytes"] == local[source]["max_memory_bytes"], source
    fitted = [source for source, record in ray.items() if record["error"] is None and record["notes"]]
    assert fitted and all(len(ray[source]["frames_indices"]) < len(unconstrained[source]["frames_indices"])
                          and ray[source]["notes"][0].startswith("memory fit: lowered frames") for source in fitted)
    assert any(record["error"] is None and not record["notes"] for record in ray.values())


def fitting_limit(unconstrained: dict) -> int:
    """A limit under which the widest clip is lowered and the narrowest is not."""
    from adapter_fixtures import midway_limit

    widest = max((record for record in unconstrained.values() if record["error"] is None),
                 key=lambda record: record["memory_estimate_bytes"])
    return midway_limit(widest, 0.75)


def test_max_memory_fits_like_the_local_engine(ray_run, ray_videos, tiny_checkpoints, tmp_path):
    """The decode stage fits each video without the model, from the replicas' figures: the frames, the notes and the
    failures equal the local engine's under the same --max-memory."""
    unconstrained = read_jsonl(ray_run)
    limit = str(fitting_limit(unconstrained))
    local = local_describe(ray_videos, tiny_checkpoints["smolvlm2"], tmp_path / "local.jsonl", "--max-memory", limit)
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], tmp_path / "ray.jsonl", "--max-memory", limit) == 0
    ray = read_jsonl(tmp_path / "ray.jsonl")
    assert_fitted_like_the_local_engine(ray, local, unconstrained)
    assert all(record["max_memory_bytes"] == int(limit) for record in ray.values() if record["error"] is None)


@pytest.mark.parametrize("ray_memory", [(), ("--max-memory", "auto")], ids=["unset", "auto"])
def test_auto_is_measured_by_the_replicas(ray_run, ray_videos, tiny_checkpoints, tmp_path, monkeypatch, ray_memory):
    """Unset or auto, the model replicas resolve --max-memory on their own side: with less RAM available (the
    environment's stand-in, which a Ray started by the command passes on to its workers), the records equal the
    local engine's under auto."""
    unconstrained = read_jsonl(ray_run)
    weights = next(record for record in unconstrained.values() if record["error"] is None)["memory_estimate"]["weights"]
    available = str(int((fitting_limit(unconstrained) - weights) / AUTO_RAM_FRACTION))
    monkeypatch.setenv(AVAILABLE_MEMORY_VARIABLE, available)
    local = local_describe(ray_videos, tiny_checkpoints["smolvlm2"], tmp_path / "local.jsonl", "--max-memory", "auto")
    out = tmp_path / "ray.jsonl"
    # a fresh process: its own local Ray, whose workers start with this environment (the session's Ray did not)
    command = [sys.executable, "-m", "vlm_app", *ray_arguments(ray_videos, tiny_checkpoints["smolvlm2"], out,
                                                                *ray_memory)]
    done = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert_fitted_like_the_local_engine(read_jsonl(out), local, unconstrained)


def test_memory_board_waits_for_every_replica_and_gives_the_smallest(ray_local):
    from vlm_app.service import ModelMemory

    board = ray_local.remote(num_cpus=0)(distributed.MemoryBoard).remote(2)
    read = board.smallest.remote()
    ray_local.get(board.post.remote(ModelMemory(3 * 2**30, 2**20, 2, "cuda:0")))
    assert ray_local.wait([read], timeout=1)[0] == []  # the other replica is still loading
    ray_local.get(board.post.remote(ModelMemory(2 * 2**30, 2**20, 2, "cuda:1")))
    assert ray_local.get(read, timeout=60) == ModelMemory(2 * 2**30, 2**20, 2, "cuda:1")


def test_without_ray_says_how_to_install(ray_videos, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], tmp_path / "out.jsonl") == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--model-replicas", "0"), "--model-replicas must be at least 1"),
    (("--stream",), "--stream and --dump-features work with --engine local"),
])
def test_option_mistakes_are_reported(ray_videos, tiny_checkpoints, tmp_path, capsys, extra, message):
    assert ray_describe(ray_videos, tiny_checkpoints["smolvlm2"], tmp_path / "out.jsonl", *extra) == 2
    assert message in capsys.readouterr().err


class FakeRay:
    """Just enough of the `ray` module to watch what `connected` starts and stops."""

    def __init__(self, running: bool = False, init_error: Exception | None = None):
        self.running, self.init_error, self.inits = running, init_error, 0

    def is_initialized(self) -> bool:
        return self.running

    def init(self, **options) -> None:
        self.inits += 1
        self.running = True  # a failing ray.init may already have started processes
        if self.init_error is not None:
            raise self.init_error

    def shutdown(self) -> None:
        self.running = False


def test_engine_stops_the_ray_it_started_and_keeps_the_one_it_found():
    started = FakeRay()
    with pytest.raises(ValueError), distributed.connected(started, distributed.Cluster()):
        assert started.running
        raise ValueError("the job failed")
    assert not started.running
    half_started = FakeRay(init_error=RuntimeError("the GCS did not come up"))
    with pytest.raises(RuntimeError), distributed.connected(half_started, distributed.Cluster()):
        pass
    assert not half_started.running
    unreachable = FakeRay(init_error=ConnectionError("refused"))
    with pytest.raises(distributed.VlmAppError, match="cannot reach the Ray cluster at ray://nowhere:10001"), \
            distributed.connected(unreachable, distributed.Cluster(address="ray://nowhere:10001")):
        pass
    assert not unreachable.running
    found = FakeRay(running=True)
    with distributed.connected(found, distributed.Cluster()):
        pass
    assert found.running and found.inits == 0


def test_session_ray_is_reused_when_already_connected(ray_local):
    """The fixture and the engine share one Ray: connecting again neither re-initialises nor shuts it down."""
    with distributed.connected(ray_local, distributed.Cluster()):
        assert ray_local.is_initialized()
    assert ray_local.is_initialized()


def test_decode_workers_sample_with_the_answer_budget(tiny_deepseek_dirs, deepseek_long_video):
    """A decode worker has no model, yet samples exactly the frames the loaded adapter's `prepare` shows for the
    job's answer budget (DeepSeek-VL2's frame count depends on it)."""
    from vlm_app.adapters.deepseek_vl2 import DeepseekVL2Adapter

    checkpoint = str(tiny_deepseek_dirs["tiny"])
    adapter = DeepseekVL2Adapter.load(checkpoint, device="cpu", dtype="float32")
    counts = []
    for max_new_tokens in (16, 1500):
        question = one_turn(DEFAULT_PROMPT, "clip", generation={"max_new_tokens": max_new_tokens})
        job = distributed.Job(model=checkpoint, question=question).located()
        row = distributed.Decoder(job)({"source": "clip", "location": str(deepseek_long_video)})
        prepared = adapter.prepare(conversation(DEFAULT_PROMPT, video=str(deepseek_long_video)),
                                   max_new_tokens=max_new_tokens)
        assert row["error"] is None
        assert row["video"].frames_indices == prepared.media[0].frames_indices
        counts.append(len(row["video"].frames_indices))
    assert counts[0] > counts[1]  # a longer answer leaves room for fewer frames


def test_qwen3_on_ray_equals_the_local_engine(ray_local, ray_videos, qwen3_checkpoints, tmp_path):
    """Qwen3-VL with its second policy (carried to Ray's decode workers), as the local engine describes it."""
    model = qwen3_checkpoints["qwen3_vl"]
    for policy in ("qwen3_vl_utils",):
        out = tmp_path / f"{policy}.jsonl"
        assert ray_describe(ray_videos, model, out, "--policy", policy) == 0
        local = local_describe(ray_videos, model, tmp_path / f"{policy}.local.jsonl", "--policy", policy)
        ray = read_jsonl(out)
        assert set(ray) == set(local)
        for source, record in ray.items():
            assert {key: record[key] for key in REPRODUCIBILITY} == {key: local[source][key] for key in REPRODUCIBILITY}
