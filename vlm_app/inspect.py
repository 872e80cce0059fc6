"""`python -m vlm_app inspect VIDEO`: what each model family would be shown, without loading any weights.

JSON shape: with `--model`, one family's report at the top level. Without it, the first family's report at the top
level (so `frames_indices`, `num_visual_tokens`, ... are always there) plus `families: {name: report}` for every
family. Each family's module says what its frames cost (`visual_tokens`) and the time text its model reads
(`frame_labels`); the report shows both.
"""

from __future__ import annotations

import json
import math

from PIL import Image, ImageDraw

from vlm_app.adapters.registry import FAMILIES, adapter_class, family_of
from vlm_app.errors import OptionsError, SourceError
from vlm_app.media import load_video
from vlm_app.media.options import RESIZE_OPTIONS, without_policy
from vlm_app.media.video import SampledVideo

SHEET_THUMB_WIDTH = 200
SHEET_LABEL_HEIGHT = 16


def run_inspect(video: str, model: str | None = None, sampling_options: dict | None = None,
                contact_sheet: str | None = None, as_json: bool = False) -> int:
    """Print what `model` (default: every family) would be shown of `video`; `contact_sheet`: also a PNG grid."""
    families = [family_of(model)] if model else list(FAMILIES)
    videos = {family: _sample(video, family, sampling_options or {}, bool(model)) for family in families}
    reports = {family: family_report(sampled, family, model or family) for family, sampled in videos.items()}
    if contact_sheet:
        write_contact_sheet(videos[families[0]], contact_sheet)
    if as_json:
        top = reports[families[0]]
        print(json.dumps(top if model else {**top, "families": reports}, indent=2))
    else:
        print("\n\n".join(_format(report) for report in reports.values()))
    return 0


def _sample(source, family: str, options: dict, explicit_model: bool) -> SampledVideo:
    """The family's sample of `source` with its default policy or the one asked for. Showing every family, options
    that mean nothing to one (pixel options where its processor resizes, another family's policy) are left out."""
    family_class = adapter_class(family)
    asked = options.get("policy")
    if asked is not None and asked not in family_class.policies and explicit_model:
        raise OptionsError(f"{family} samples video with the {' or '.join(family_class.policies)} policy, not "
                           f"{asked!r}")
    policy = family_class.policies[asked if asked in family_class.policies else family_class.policy]()
    kept = without_policy(options)
    if family_class.sound_tokens(0.0) is None:  # no model of the family hears: its sound is not decoded
        kept.pop("audio", None)
    if not explicit_model and policy.resize_rule is None:
        kept = {key: value for key, value in kept.items() if key not in RESIZE_OPTIONS}
    return load_video(source, policy, **kept)


def family_report(video: SampledVideo, family: str, model_name: str) -> dict:
    family_class = adapter_class(family)
    meta = video.metadata
    notes = list(video.notes)
    if family == "deepseek_vl2" and len(video.frames_indices) <= 2:
        notes.append("DeepSeek-VL2 tiles 1-2 images, so the real count is higher than 421 per frame")
    return {
        "family": family,
        "policy": video.policy.name,
        "model": model_name,
        "frames_indices": video.frames_indices,
        "timestamps": [round(seconds, 4) for seconds in video.timestamps],
        "frame_labels": family_class.frame_labels(video),
        "num_frames": len(video.frames_indices),
        "resized_height": video.resized_height,
        "resized_width": video.resized_width,
        "sample_fps": video.sample_fps,
        "num_visual_tokens": family_class.visual_tokens(video, model_name),
        "audio": ({**video.soundtrack.summary(), "tokens": family_class.sound_tokens(video.soundtrack.seconds)}
                  if video.soundtrack is not None else {"used": False}),
        "backend": video.backend,
        "decode_seconds": round(video.decode_seconds, 4),
        "notes": notes,
        "source": {"num_frames": meta.num_frames, "fps": meta.fps, "duration": meta.duration, "width": meta.width,
                   "height": meta.height, "rotation": meta.rotation, "codec": meta.codec,
                   "variable_frame_rate": meta.is_vfr},
    }


def _format(report: dict) -> str:
    source = report["source"]
    lines = [
        f"{report['family']} ({report['model']}, policy {report['policy']}): {report['num_frames']} frames, {report['num_visual_tokens']} visual "
        f"tokens, backend {report['backend']}, decoded in {report['decode_seconds']:.3f} s",
        f"  source: {source['width']}x{source['height']}, {source['num_frames']} frames at {source['fps']:.3f} fps, "
        f"{source['duration']:.2f} s, {source['codec']}, rotation {source['rotation']}",
        f"  resized: {report['resized_height']}x{report['resized_width']} (HxW), sample fps {report['sample_fps']:.4f}",
        f"  indices: {report['frames_indices']}",
        f"  timestamps (s): {' '.join(f'{seconds:.2f}' for seconds in report['timestamps'])}",
    ]
    if report["frame_labels"]:
        lines.append(f"  the model reads: {' '.join(report['frame_labels'])}")
    if report["audio"]["used"]:
        lines.append(f"  the model hears: {report['audio']['seconds']:.2f} s of sound from "
                     f"{report['audio']['start']:.2f} s, {report['audio']['tokens']} audio tokens")
    lines += [f"  note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def write_contact_sheet(video: SampledVideo, path: str) -> None:
    """A PNG grid of the sampled frames, each labelled with its index and timestamp."""
    count = len(video.frames_indices)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    thumb_height = max(1, round(SHEET_THUMB_WIDTH * video.resized_height / video.resized_width))
    cell_height = thumb_height + SHEET_LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * SHEET_THUMB_WIDTH, rows * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    for position, (frame, index, seconds) in enumerate(zip(video.frames, video.frames_indices, video.timestamps)):
        thumb = Image.fromarray(frame.permute(1, 2, 0).numpy()).resize((SHEET_THUMB_WIDTH, thumb_height))
        left, top = position % columns * SHEET_THUMB_WIDTH, position // columns * cell_height
        sheet.paste(thumb, (left, top))
        draw.text((left + 4, top + thumb_height + 2), f"#{index}  {seconds:.2f} s", fill="black")
    try:
        sheet.save(path, format="PNG")
    except OSError as error:
        raise SourceError(f"cannot write the contact sheet to {path} ({error.strerror or error}); check the folder "
                          "exists and is writable") from None
