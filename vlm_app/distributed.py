"""Describe a collection of videos on Ray Data: the records of `describe`, computed on a laptop or a cluster.

    sources --> decode workers (CPU actors: the adapter's own `load_media`, no weights)
            --> model replicas (actors that load the model once; a GPU each when asked)
            --> the driver appends each record to the output as it arrives (JSONL, or a Parquet folder)

Both stages are actor pools, so Ray Data never fuses decoding into the model actors (it fuses a task stage into
the next actor stage): frames are decoded while the model generates. Only uint8 frames and small metadata cross
the object store. Records come from `vlm_app.service` (`Run` / `build_record`), so they equal the sequential
path's records, answers included. Without `address` a local Ray is started and stopped around the job.

Under a memory limit the decode workers fit each video before a replica gets it, so they need the replicas' side of
the fit: each replica, once loaded, posts its limit ("auto" resolved on its device), weights, element bytes and
device to a `MemoryBoard`, and the decode workers fit to the figures with the smallest limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlm_app.folders import collection_sources
from vlm_app.errors import OptionsError, SourceError, VlmAppError
from vlm_app.results import JsonlResults, check_resumed, same_source, sources_to_skip
from vlm_app.service import MemoryGuard, Request, Run, build_record, memory_fit, model_memory

INSTALL_HINT = 'the ray engine needs Ray Data: pip install -e ".[ray]"  (or: pip install "ray[data]>=2.40" pyarrow)'
PARQUET_PART_ROWS = 64  # records per Parquet part file: a crash loses at most this many finished records


@dataclass(frozen=True)
class Job:
    """What every worker needs to know, shipped to each actor once."""

    model: str  # as the user named it; records carry this name
    question: Request  # asked of every video (`Request.about`): prompt, sampling, generation, limits, memory limit
    model_options: dict = field(default_factory=dict)  # load_adapter keywords: device, dtype, attn, ...
    batch_size: int = 1  # videos a replica takes at once, their answers generated in one batch (`vlm_app.batching`)
    model_location: str = ""  # set by the driver: a local folder as an absolute path, else the name

    def located(self) -> Job:
        """This job with `model_location` filled in; call it on the driver, whose working directory the workers
        do not share."""
        location = os.path.abspath(self.model) if os.path.isdir(self.model) else self.model
        return replace(self, model_location=location)


@dataclass(frozen=True)
class Cluster:
    """Where to run and how wide. `decode_workers=None` means: the cluster's CPUs not taken by model replicas."""

    address: str | None = None  # None: a local Ray; "auto": the cluster this node belongs to; "ray://host:10001"
    decode_workers: int | None = None
    model_replicas: int = 1
    gpus_per_replica: float = 0.0

    def __post_init__(self):
        if self.decode_workers is not None and self.decode_workers < 1:
            raise OptionsError(f"--decode-workers must be at least 1, got {self.decode_workers}")
        if self.model_replicas < 1:
            raise OptionsError(f"--model-replicas must be at least 1, got {self.model_replicas}")
        if self.gpus_per_replica < 0:
            raise OptionsError(f"--gpus-per-replica must be 0 or more, got {self.gpus_per_replica}")


def import_ray():
    """The `ray` module, or a VlmAppError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra, not just ray core)
    except ImportError as error:
        raise VlmAppError(INSTALL_HINT) from error
    return ray


# ---- the two stages --------------------------------------------------------------------------------------------
class MemoryBoard:
    """Where the model replicas post their `service.ModelMemory` once loaded, and the decode workers read the one
    with the smallest limit: every video is fitted to it. An async actor, so a read waits for all `replicas`
    without holding up their posts (a replica Ray restarts posts again; the smallest still holds)."""

    def __init__(self, replicas: int):
        self.replicas, self.posted, self.complete = replicas, [], asyncio.Event()

    def post(self, memory) -> None:
        self.posted.append(memory)
        if len(self.posted) >= self.replicas:
            self.complete.set()

    async def smallest(self):
        await self.complete.wait()
        return min(self.posted, key=lambda memory: memory.limit)


def replicas_memory(board):
    """The figures every video is fitted to, once all replicas posted theirs (on a first request: the wait for the
    models to load)."""
    import ray

    return ray.get(board.smallest.remote())


class Decoder:
    """A decode worker: samples each video exactly as the model's adapter would, without loading weights.
    The adapter is built around the checkpoint's processor and config, because they set sampling defaults
    (SmolVLM2's fps and frame cap, DeepSeek-VL2's context) and `load_media` applies them with the family's
    policy and the job's answer budget. With a `MemoryBoard` it fits each video as the request layer would on a
    replica (`service.memory_fit`), with the figures the replicas measured."""

    def __init__(self, job: Job, board=None):
        from vlm_app.adapters import registry
        from vlm_app.hub import locate

        ref = registry.resolve(job.model_location)
        path, _ = locate(ref, job.model_options.get("revision"))
        self.sampler = registry.adapter_class(ref.family).without_weights(path)
        self.job, self.board, self.replicas = job, board, None  # replicas: their `ModelMemory`, once read

    def __call__(self, row: dict) -> dict:
        request = self.job.question.about(row["location"])
        if self.board is not None:
            self.replicas = self.replicas or replicas_memory(self.board)
        fit = memory_fit(self.sampler, request, self.replicas) if self.replicas is not None else None
        try:
            with MemoryGuard("decoding the video", "cpu"):
                video = self.sampler.load_media(request.messages, request.media, request.max_new_tokens,
                                                fit=fit.fit_video if fit is not None else None)[0]
        except VlmAppError as error:
            return {"source": row["source"], "video": None, "error": str(error), "notes": "[]"}
        # the fit's notes go to the replica's record (as JSON text: an empty list has no Arrow type)
        return {"source": row["source"], "video": video, "error": None,
                "notes": json.dumps(fit.notes if fit is not None else [])}


class Describer:
    """A model replica: loads the model once, then turns decoded videos into records (as JSON text, which
    crosses Arrow blocks without schema surprises). With a `MemoryBoard` it posts its memory figures once loaded,
    and its requests take the limit the decode workers fitted to (the records' `max_memory_bytes`)."""

    def __init__(self, job: Job, board=None):
        from vlm_app.runtime import load_adapter

        self.adapter = load_adapter(job.model_location, **job.model_options)
        self.adapter.info.model_id = job.model
        if board is not None:
            import ray

            ray.get(board.post.remote(model_memory(self.adapter, job.question.memory.max_memory)))
        self.job, self.board, self.replicas = job, board, None

    def __call__(self, row: dict) -> dict:
        request = self._request(row)
        if row["error"] is not None:
            record = build_record(self.adapter, request, error=row["error"])
        else:
            run = Run(self.adapter, request)
            run.notes += json.loads(row["notes"])  # the decode stage's memory fit, first as on the local engine
            record = run.execute()
        return {"record": json.dumps(record)}

    def _request(self, row: dict) -> Request:
        question = self.job.question
        if self.board is not None:
            self.replicas = self.replicas or replicas_memory(self.board)
        shown = row["video"] if row["error"] is None else row["source"]
        memory = replace(question.memory, max_memory=self.replicas.limit) if self.replicas else question.memory
        return replace(question.about(shown), source=row["source"], memory=memory)


class BatchDescriber(Describer):
    """A model replica that takes `job.batch_size` decoded videos at a time and generates their answers in one
    batch (`vlm_app.batching.execute_batch`); each record is the one `Describer` makes of its video."""

    def __call__(self, batch: dict) -> dict:
        from vlm_app.batching import execute_batch

        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:  # a batch's column of no errors may come as NaN
            row["error"] = row["error"] if isinstance(row["error"], str) else None
        requests = [self._request(row) for row in rows]
        records = [build_record(self.adapter, request, error=row["error"]) if row["error"] is not None else None
                   for row, request in zip(rows, requests)]
        ready = [index for index, record in enumerate(records) if record is None]
        answered = execute_batch(self.adapter, [requests[index] for index in ready], max_batch=self.job.batch_size)
        for index, record in zip(ready, answered):
            record["notes"] = json.loads(rows[index]["notes"]) + record["notes"]  # the decode stage's fit first
            records[index] = record
        return {"record": [json.dumps(record) for record in records]}


# ---- the driver --------------------------------------------------------------------------------------------------
def list_sources(source: str | Path) -> list[str]:
    """A folder's videos (recursive), or the lines of a list file (paths or URLs; blank lines and # comments skipped)."""
    sources = collection_sources(source)
    if sources is not None:
        return sources
    path = Path(source)
    if path.is_file():
        return [str(path)]
    raise SourceError(f"{source} is neither a folder nor a list file (.txt, one video per line) nor a video")


@contextmanager
def connected(ray, cluster: Cluster):
    """Attach to the cluster (or start a local one) unless this process already is; disconnect only if we did."""
    if ray.is_initialized():
        yield
        return
    try:
        _start(ray, cluster)
        yield
    finally:
        if ray.is_initialized():  # what we started, even half-way, is gone when we return
            ray.shutdown()


def _start(ray, cluster: Cluster) -> None:
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if cluster.address is None:
        wanted = (cluster.decode_workers or 1) + cluster.model_replicas
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, wanted), **quiet)  # never a running cluster
        return
    try:
        ray.init(address=cluster.address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError) as error:
        raise VlmAppError(f"cannot reach the Ray cluster at {cluster.address}: {error}. Start it with "
                          "`ray start --head` (then --address auto) or give its ray://host:10001 address") from error


def build_dataset(ray, sources: list[str], job: Job, cluster: Cluster):
    """sources -> decode actor pool -> model actor pool, one video per block so every stage spreads over its pool."""
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts finished videos
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-run plan and progress lines
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    decode_workers = cluster.decode_workers or default_decode_workers(ray, cluster)
    rows = [{"source": source, "location": _location(source)} for source in sources]
    dataset = ray.data.from_items(rows, override_num_blocks=len(sources))
    board = ray.remote(num_cpus=0)(MemoryBoard).remote(cluster.model_replicas) if job.question.memory.fits else None
    dataset = dataset.map(Decoder, fn_constructor_args=(job, board), num_cpus=1,
                          compute=ActorPoolStrategy(size=decode_workers))
    replicas = {"fn_constructor_args": (job, board), "num_cpus": 1, "num_gpus": cluster.gpus_per_replica or None,
                "compute": ActorPoolStrategy(size=cluster.model_replicas)}
    if job.batch_size > 1:
        return dataset.map_batches(BatchDescriber, batch_size=job.batch_size, batch_format="numpy", **replicas)
    return dataset.map(Describer, **replicas)


def _location(source: str) -> str:
    """Where any node finds a source: local files by absolute path (shared storage), URLs as they are."""
    return os.path.abspath(source) if os.path.exists(source) else source


def default_decode_workers(ray, cluster: Cluster) -> int:
    """The cluster's CPUs left after one per model replica (at least one)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus - cluster.model_replicas)


def describe_on_ray(source: str | Path, out: str | Path, job: Job, cluster: Cluster | None = None,
                    resume: bool = False, retry_failed: bool = False, progress: bool = True,
                    emit=None) -> tuple[int, int]:
    """Describe every video of `source` (folder or list file) into `out` (.jsonl, or .parquet: a folder of parts),
    writing records as they complete (and passing each to `emit`). `resume` and `retry_failed` follow the one
    resume rule of `vlm_app.results`, and records kept must have been made with the job's model and options, as
    the local engine checks them (`results.check_resumed`, before any model loads). Returns how many videos this
    run described and how many of those failed."""
    from tqdm import tqdm

    from vlm_app.runtime import ModelChoice

    ray = import_ray()
    cluster = cluster or Cluster()
    sources = list_sources(source)
    writer = ParquetParts(Path(out)) if str(out).endswith(".parquet") else JsonlResults(out, inputs=[source, *sources])
    skip = writer.start(resume, retry_failed)
    try:
        check_resumed(writer, sources, ModelChoice(job.model, job.model_options), job.question)
    except VlmAppError:
        writer.close()
        raise
    todo = [s for s in sources if same_source(s) not in skip]
    if not todo:
        return 0, 0
    _check_model(job)
    job = job.located()
    described = failed = 0
    with connected(ray, cluster), tqdm(total=len(todo), desc="describe (ray)", unit="video", disable=not progress,
                                        file=sys.stderr) as bar:
        try:
            for row in build_dataset(ray, todo, job, cluster).iter_rows():
                record = json.loads(row["record"])
                writer.add(record)
                if emit is not None:
                    emit(record)
                described += record["error"] is None
                failed += record["error"] is not None
                bar.update()
        except ray.exceptions.RayError as error:
            raise VlmAppError(f"the Ray job failed: {_root_message(error)}") from error
        finally:
            writer.close()
    return described, failed


def _check_model(job: Job) -> None:
    """Fail on the driver, in a second, for a model name no worker could load."""
    from vlm_app.adapters.registry import resolve

    resolve(job.model)


def _root_message(error: BaseException) -> str:
    """The last line of a Ray error: the original exception, without the remote traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ---- outputs -----------------------------------------------------------------------------------------------------
class ParquetParts:
    """A Parquet dataset folder (readable by pandas, pyarrow, Spark, Ray), one part file per batch of records.
    Nested fields (timings, sampling, model info) are stored as JSON text so every part has the same columns."""

    def __init__(self, path: Path):
        self.path = path
        self.pending: list[dict] = []
        self.kept: dict[str, dict] = {}  # the records a resumed run keeps, by source

    def start(self, resume: bool, retry_failed: bool = False) -> set[str]:
        """Prepare the folder; return the sources to skip (the resume rule of `vlm_app.results`)."""
        if self.path.is_file():
            raise OptionsError(f"{self.path} is a file; a .parquet output is a folder of part files")
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            for part in self.path.glob("part-*.parquet"):
                part.unlink()
            return set()
        if retry_failed:
            self._drop_failed()
        self.kept = {record["source"]: record for record in read_parquet_records(self.path)}
        return sources_to_skip(self.kept.values())

    def _drop_failed(self) -> None:
        """Rewrite every part that holds failed records without them."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for part in self.path.glob("part-*.parquet"):
            table = pq.read_table(part)
            kept = table.filter(pc.is_null(table["error"]))
            if kept.num_rows < table.num_rows:
                partial = part.with_name(part.name + ".partial")
                pq.write_table(kept, partial)
                os.replace(partial, part)

    def add(self, record: dict) -> None:
        self.pending.append({key: json.dumps(value) if isinstance(value, dict) else value
                             for key, value in record.items()})
        if len(self.pending) >= PARQUET_PART_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        number = len(list(self.path.glob("part-*.parquet")))
        pq.write_table(pa.Table.from_pylist(self.pending), self.path / f"part-{number:05d}.parquet")
        self.pending = []

    close = flush


def read_parquet_records(path: str | Path) -> list[dict]:
    """Records of a Parquet output folder, in part order (JSON text fields stay text)."""
    import pyarrow.parquet as pq

    return [row for part in sorted(Path(path).glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]
