"""The prompts of a description: the default question and the templates of `prompts/` (--template)."""

from __future__ import annotations

from pathlib import Path

from vlm_app.errors import OptionsError

DEFAULT_PROMPT = "Describe this video."
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


def prompt_templates() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PROMPTS_DIR.glob("*.txt"))}


def resolve_prompt(prompt: str | None = None, template: str | None = None) -> str:
    """The prompt text from --prompt and/or --template (a name in prompts/ or a file). A template with a
    {question} slot takes --prompt as the question."""
    if template is None:
        return prompt or DEFAULT_PROMPT
    templates = prompt_templates()
    path = templates.get(template) or Path(template)
    if not path.is_file():
        raise OptionsError(f"unknown prompt template {template!r}; use one of {', '.join(templates)} or a file path")
    text = path.read_text().strip()
    if "{question}" in text:
        if not prompt:
            raise OptionsError(f"template {template!r} needs a question: pass it with --prompt")
        return text.replace("{question}", prompt)
    if prompt:
        raise OptionsError(f"template {template!r} has no {{question}} slot; pass --prompt or --template, not both")
    return text
