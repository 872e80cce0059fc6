"""The names a server shows for its models (`serve` and `ui`, `--models NAME=PATH_OR_HUB_ID`), as vLLM's
--served-model-name: clients see and send NAME, never a local path. Without a NAME, a hub id or short name keeps
itself and a checkpoint folder is named by its folder's name."""

from __future__ import annotations

import re
from pathlib import Path

from vlm_app.errors import OptionsError

NAME = re.compile(r"^[A-Za-z0-9][\w.:/-]{0,127}$")  # what clients send as `model`


def default_name(source: str) -> str:
    """A folder's name for a checkpoint folder; a hub id or short name as given."""
    path = Path(source).expanduser()
    return path.resolve().name if path.is_dir() else source


def served_models(specs: list[str]) -> dict[str, str]:
    """`--models` values (NAME=SOURCE or SOURCE) as {served name: source}, in order; OptionsError on a bad or
    repeated name (two folders of the same name need a NAME each). The same source given twice is offered once."""
    served: dict[str, str] = {}
    for spec in specs:
        name, equals, source = spec.partition("=")
        if equals and not Path(spec).expanduser().exists():
            name, source = name.strip(), source.strip()
            if not source or not NAME.match(name):
                raise OptionsError(f"--models {spec!r}: give NAME=PATH_OR_HUB_ID, NAME of letters, digits and ._:/- "
                                   "(what clients send as the model)")
        else:
            name, source = default_name(spec), spec
        if served.get(name, source) != source:
            raise OptionsError(f"--models: two models would be served as {name!r} ({served[name]} and {source}); "
                               f"name them, e.g. --models {name}-a={served[name]} {name}-b={source}")
        served[name] = source
    return served
