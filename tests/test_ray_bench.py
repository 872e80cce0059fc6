"""`bench batch --ray` through the CLI, shrunk to two clips: both paths run and report throughput."""

from __future__ import annotations

import re

from vlm_app.cli import main


def test_bench_batch_reports_both_paths(ray_local, capsys):
    assert main(["bench", "batch", "--ray", "--videos", "2", "--seconds", "1", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    sequential = re.search(r"sequential: .* -> ([0-9.]+) videos/s", out)
    ray = re.search(r"ray \(local, .* -> ([0-9.]+) videos/s end to end", out)
    assert sequential and ray and float(sequential.group(1)) > 0 and float(ray.group(1)) > 0
    for part in ("decode+sample", "processor", "generation"):
        assert re.search(rf"{re.escape(part)}\s+[0-9.]+ ms/video", out)
    assert "answers equal to the sequential ones: 2/2" in out
