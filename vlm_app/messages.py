"""The chat message schema: Qwen-style content items, validated and normalised.

    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": [
         {"type": "video", "video": "clip.mp4", "fps": 1.0, "max_pixels": 200704},
         {"type": "text", "text": "What happens?"}]},
     {"role": "assistant", "content": "A dog runs."},
     {"role": "user", "content": [{"type": "image", "image": "frame.png"}, {"type": "text", "text": "And here?"}]}]

`content` is a string or a list of items. A media item names its source under its type (a path, URL, frame
list, PIL image, or an already sampled `SampledVideo` / `SampledImage`) and may carry per-item sampling options
(qwen-vl-utils names). Items written the qwen-vl-utils way without "type" (`{"video": ...}`, `{"image_url": ...}`)
are accepted. Mistakes raise OptionsError.
"""

from __future__ import annotations

from typing import Any

from vlm_app.errors import OptionsError
from vlm_app.media.options import IMAGE_OPTIONS, VIDEO_OPTIONS, value_error

ROLES = ("system", "user", "assistant")


def _item_type(item: dict) -> str:
    if "type" in item:
        return "image" if item["type"] == "image_url" else item["type"]
    for kind in ("text", "video", "image"):
        if kind in item:
            return kind
    if "image_url" in item:
        return "image"
    raise OptionsError(f"content item {item!r} has no type; use {{'type': 'text'|'image'|'video', ...}}")


def _unicode(text: str, where: str, errors: str = "strict") -> str:
    """`text` if it is valid Unicode: JSON's "\\ud800" (a lone surrogate) decodes to a str that no tokenizer or
    file system takes. Sources pass errors="surrogateescape": a local file name's undecodable bytes are fine."""
    try:
        text.encode("utf-8", errors)
    except UnicodeEncodeError as error:
        raise OptionsError(f"{where}: {text[error.start]!r} is half of a surrogate pair, not a character; send "
                           "valid UTF-8") from None
    return text


def _normalize_item(item: Any, where: str) -> dict:
    if isinstance(item, str):
        return {"type": "text", "text": _unicode(item, where)}
    if not isinstance(item, dict):
        raise OptionsError(f"{where}: a content item must be a dict or a string, got {type(item).__name__}")
    kind = _item_type(item)
    if kind == "text":
        if not isinstance(item.get("text"), str):
            raise OptionsError(f"{where}: a text item needs a string under 'text'")
        return {"type": "text", "text": _unicode(item["text"], where)}
    if kind not in ("image", "video", "audio"):
        raise OptionsError(f"{where}: unknown content type {kind!r}; use text, image, video or audio")
    source = item.get(kind, item.get("image_url") if kind == "image" else None)
    if isinstance(source, dict) and "url" in source:  # OpenAI-style {"image_url": {"url": ...}}
        source = source["url"]
    if source is None:
        raise OptionsError(f"{where}: a {kind} item needs its source under {kind!r}")
    if isinstance(source, str):
        _unicode(source, where, "surrogateescape")
    allowed = {"video": VIDEO_OPTIONS, "image": IMAGE_OPTIONS, "audio": ()}[kind]
    options = {key: value for key, value in item.items() if key not in ("type", kind, "image_url")}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OptionsError(f"{where}: unknown {kind} option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    for key, value in options.items():
        if error := value_error(key, value):
            raise OptionsError(f"{where}: {kind} option {error}")
    return {"type": kind, kind: source, **{k: v for k, v in options.items() if v is not None}}


def normalize(messages: list[dict]) -> list[dict]:
    """Validated copy of a conversation with every `content` as a list of normalised items."""
    if not isinstance(messages, list) or not messages:
        raise OptionsError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    result = []
    for number, message in enumerate(messages):
        where = f"message {number}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise OptionsError(f"{where}: each message needs 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise OptionsError(f"{where}: unknown role {role!r}; use {', '.join(ROLES)}")
        if role == "system" and number != 0:
            raise OptionsError(f"{where}: the system prompt must be the first message")
        content = message["content"]
        items = [content] if isinstance(content, str) else content
        if not isinstance(items, list) or not items:
            raise OptionsError(f"{where}: content must be a string or a non-empty list of items")
        items = [_normalize_item(item, where) for item in items]
        if role != "user" and any(item["type"] != "text" for item in items):
            raise OptionsError(f"{where}: only user messages may carry images, videos or audio")
        result.append({"role": role, "content": items})
    if result[-1]["role"] != "user":
        raise OptionsError("the last message must be from the user (the model answers it)")
    return result


def media_items(messages: list[dict]) -> list[dict]:
    """The image, video and audio items of normalised messages, in order."""
    return [item for message in messages for item in message["content"] if item["type"] != "text"]


def media_options(item: dict) -> dict:
    """The per-item sampling options of a media item."""
    return {key: value for key, value in item.items() if key not in ("type", item["type"])}


def refuse_placeholders(messages: list[dict], placeholders: tuple[str, ...], model: str) -> None:
    """OptionsError when the text of normalised messages holds one of a model's media placeholders: the processor
    would expand it with the visual tokens of another item (or find too few items), so the map would be wrong."""
    texts = [item["text"] for message in messages for item in message["content"] if item["type"] == "text"]
    for tag in placeholders:
        if any(tag in text for text in texts):
            raise OptionsError(f"the prompt text holds a literal {tag}: {model} shows each image or video where its "
                               "item is in the message; remove the placeholder from the text")


def for_template(messages: list[dict]) -> list[dict]:
    """Messages with media sources removed, as chat templates take them ({"type": "video"} placeholders)."""
    return [{"role": message["role"],
             "content": [item if item["type"] == "text" else {"type": item["type"]} for item in message["content"]]}
            for message in messages]


def conversation(prompt: str, video: Any = None, image: Any = None, system: str | None = None,
                 **video_options) -> list[dict]:
    """A one-turn conversation: optional system prompt, then the media and the prompt."""
    items: list[dict] = []
    if image is not None:
        items.append({"type": "image", "image": image})
    if video is not None:
        items.append({"type": "video", "video": video, **video_options})
    items.append({"type": "text", "text": prompt})
    messages = [{"role": "system", "content": system}] if system else []
    return normalize(messages + [{"role": "user", "content": items}])
