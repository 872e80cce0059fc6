"""Shared test settings. Area fixtures live in tests/<area>_fixtures.py and are listed in pytest_plugins."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

pytest_plugins: list[str] = ["media_fixtures", "adapter_fixtures", "ui_fixtures", "deepseek_fixtures", "ray_fixtures",
                               "real_files_fixtures", "server_fixtures", "lora_fixtures"]
