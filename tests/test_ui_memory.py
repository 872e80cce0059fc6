"""Resident memory of the app over 50 sequential chat requests stays within 10% of where it settled after five."""

from __future__ import annotations

import json
from pathlib import Path

from gradio_client import handle_file

REQUESTS = 50
SETTLED_AFTER = 5
TOLERANCE = 0.10
REPORT = Path(__file__).resolve().parent.parent / "artifacts" / "ui_memory.json"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def test_memory_is_flat_over_fifty_chat_requests(ui_client, ui_server, ui_clip):
    rss = []
    for number in range(REQUESTS):
        message = {"text": f"Question {number}: what moves?", "files": [handle_file(str(ui_clip))]}
        _, details = ui_client.predict(message, [], ui_server.models[number % 2], {"max_new_tokens": 8},
                                       api_name="/chat")
        assert "stats" in details, details
        rss.append(rss_bytes(ui_server.pid))
    settled, final = rss[SETTLED_AFTER - 1], rss[-1]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"settled_after_5_mib": settled / 2**20, "after_50_mib": final / 2**20,
                                  "max_mib": max(rss) / 2**20, "growth": final / settled - 1,
                                  "rss_mib": [round(value / 2**20, 1) for value in rss]}, indent=1))
    print(f"RSS after {SETTLED_AFTER}: {settled / 2**20:.1f} MiB, after {REQUESTS}: {final / 2**20:.1f} MiB "
          f"({final / settled - 1:+.1%}), max {max(rss) / 2**20:.1f} MiB")
    assert abs(final / settled - 1) <= TOLERANCE
    assert max(rss[SETTLED_AFTER:]) <= settled * (1 + TOLERANCE)
