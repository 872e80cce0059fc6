"""DeepseekVLV2Processor: the official DeepSeek-VL2 processor (tiling, chat format, batching) on transformers 5.

Same call signature and outputs as the official class:
`processor(prompt=... | conversations=..., images=[PIL...], apply_sft_format=False, force_batchify=True,
inference_mode=True, system_prompt="")`. One deliberate fix: batching never turns `images_seq_mask` into int64
(the official `batchify` pads it with the tokenizer and the model then fails), and `attention_mask` is int64.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import AddedToken

from .configuration import CANDIDATE_RESOLUTIONS

PROCESSOR_CONFIG = "processor_config.json"
GROUNDING_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
USER, ASSISTANT = "<|User|>", "<|Assistant|>"  # roles of the official "deepseek" chat template
TURN_SEPARATORS = ("\n\n", "<｜end▁of▁sentence｜>")


def select_best_resolution(image_size: tuple[int, int], candidate_resolutions) -> tuple[int, int]:
    """The candidate (W, H) keeping the most pixels of the image, ties broken by the least padding."""
    width, height = image_size
    best, best_effective, best_wasted = None, 0, float("inf")
    for cand_w, cand_h in candidate_resolutions:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (cand_w, cand_h), effective, wasted
    return best


def render_turns(turns: list[tuple[str, str]], system_prompt: str = "") -> str:
    """The official "deepseek" template: `[system\\n\\n]role: message<sep>...`, an empty message leaves `role:`."""
    text = system_prompt + TURN_SEPARATORS[0] if system_prompt else ""
    for index, (role, message) in enumerate(turns):
        text += f"{role}: {message}{TURN_SEPARATORS[index % 2]}" if message else f"{role}:"
    return text


class _DictLike:
    def keys(self):
        return self.__dict__.keys()

    def __getitem__(self, key):
        return self.__dict__[key]

    def __setitem__(self, key, value):
        self.__dict__[key] = value


@dataclass
class VLChatProcessorOutput(_DictLike):
    sft_format: str
    input_ids: torch.LongTensor
    target_ids: torch.LongTensor
    images: torch.Tensor
    images_seq_mask: torch.BoolTensor
    images_spatial_crop: torch.LongTensor
    num_image_tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class BatchCollateOutput(_DictLike):
    sft_format: list[str]
    input_ids: torch.LongTensor
    labels: torch.LongTensor
    images: torch.Tensor
    attention_mask: torch.LongTensor
    images_seq_mask: torch.BoolTensor
    images_spatial_crop: torch.LongTensor
    seq_lens: list[int]

    def to(self, device, dtype=torch.bfloat16) -> "BatchCollateOutput":
        """Moves every tensor to `device`; only `images` changes dtype (as the official class)."""
        for name in ("input_ids", "labels", "attention_mask", "images_seq_mask", "images_spatial_crop"):
            setattr(self, name, getattr(self, name).to(device))
        self.images = self.images.to(device=device, dtype=dtype)
        return self


class DeepseekVLV2Processor:
    def __init__(self, tokenizer, candidate_resolutions=CANDIDATE_RESOLUTIONS, patch_size: int = 14,
                 downsample_ratio: int = 2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 normalize: bool = True, image_token: str = "<image>", pad_token: str = "<｜▁pad▁｜>",
                 add_special_token: bool = False, sft_format: str = "deepseek", mask_prompt: bool = True,
                 ignore_id: int = -100, **unused):
        if sft_format != "deepseek":
            raise ValueError(f"sft_format {sft_format!r} is not supported (only 'deepseek')")
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.candidate_resolutions = [list(r) for r in candidate_resolutions]
        self.image_size = self.candidate_resolutions[0][0]
        self.patch_size, self.downsample_ratio = patch_size, downsample_ratio
        self.image_mean, self.image_std, self.normalize = list(image_mean), list(image_std), normalize
        self.image_token, self.pad_token = image_token, pad_token
        self.add_special_token, self.sft_format = add_special_token, sft_format
        self.mask_prompt, self.ignore_id = mask_prompt, ignore_id
        self._add_missing_tokens()
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)

    # --- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "DeepseekVLV2Processor":
        with open(os.path.join(path, PROCESSOR_CONFIG), encoding="utf-8") as f:
            settings = json.load(f)
        settings.pop("processor_class", None)
        return cls(AutoTokenizer.from_pretrained(path), **{**settings, **overrides})

    def to_dict(self) -> dict:
        return {"processor_class": "DeepseekVLV2Processor", "candidate_resolutions": self.candidate_resolutions,
                "patch_size": self.patch_size, "downsample_ratio": self.downsample_ratio,
                "image_mean": self.image_mean, "image_std": self.image_std, "normalize": self.normalize,
                "image_token": self.image_token, "pad_token": self.pad_token,
                "add_special_token": self.add_special_token, "sft_format": self.sft_format,
                "mask_prompt": self.mask_prompt, "ignore_id": self.ignore_id}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, PROCESSOR_CONFIG), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, ensure_ascii=False)

    def _add_missing_tokens(self) -> None:
        """The official processor adds pad, image, grounding and chat tokens when the tokenizer lacks them."""
        if self.tokenizer.pad_token is None:
            self.tokenizer.add_special_tokens({"pad_token": self.pad_token})
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in (self.image_token, *GROUNDING_TOKENS, USER, ASSISTANT) if t not in vocab]
        if missing:
            self.tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                                      special_tokens=True)

    # --- token ids ----------------------------------------------------------------------------------------

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **kwargs)

    # --- images -------------------------------------------------------------------------------------------

    @property
    def tokens_per_side(self) -> int:
        """Visual tokens per side of one 384 view after the 2x2 downsample (14 for the released models)."""
        return math.ceil((self.image_size // self.patch_size) / self.downsample_ratio)

    def num_image_tokens_for(self, num_width_tiles: int, num_height_tiles: int) -> int:
        """Global view with a newline per row, the separator, then the local tiles with a newline per row."""
        side = self.tokens_per_side
        return side * (side + 1) + 1 + (num_height_tiles * side) * (num_width_tiles * side + 1)

    def tile_grid(self, image_size: tuple[int, int], cropping: bool) -> tuple[int, int]:
        """(num_width_tiles, num_height_tiles) the image is cut into."""
        if not cropping:
            return 1, 1
        best_w, best_h = select_best_resolution(image_size, self.candidate_resolutions)
        return best_w // self.image_size, best_h // self.image_size

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        tensor = TF.to_tensor(image)
        return TF.normalize(tensor, self.image_mean, self.image_std) if self.normalize else tensor

    def image_views(self, image: Image.Image, cropping: bool) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The global view then the local tiles (row-major) of one image, and its (width, height) tile grid."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        fill = tuple(int(m * 255) for m in self.image_mean)
        grid_w, grid_h = self.tile_grid(image.size, cropping)
        views = [self._to_tensor(ImageOps.pad(image, (self.image_size, self.image_size), color=fill))]
        local = ImageOps.pad(image, (grid_w * self.image_size, grid_h * self.image_size), color=fill)
        for top in range(0, grid_h * self.image_size, self.image_size):
            for left in range(0, grid_w * self.image_size, self.image_size):
                box = (left, top, left + self.image_size, top + self.image_size)
                views.append(self._to_tensor(local.crop(box)))
        return views, (grid_w, grid_h)

    # --- text with images ---------------------------------------------------------------------------------

    def tokenize_with_images(self, conversation: str, images: list, bos: bool = True, eos: bool = True,
                             cropping: bool = True):
        """Token ids with every `<image>` expanded to its visual tokens, plus views, mask, grids and counts."""
        pieces = conversation.split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the text has {len(pieces) - 1} {self.image_token} tags but {len(images)} images "
                             "were given; pass one image per tag")
        ids, seq_mask, views, grids, counts = [], [], [], [], []
        for text, image in zip(pieces, images):
            text_ids = self.encode(text, bos=False, eos=False)
            image_views, grid = self.image_views(image, cropping)
            count = self.num_image_tokens_for(*grid)
            ids += text_ids + [self.image_token_id] * count
            seq_mask += [False] * len(text_ids) + [True] * count
            views += image_views
            grids.append(list(grid))
            counts.append(count)
        tail = self.encode(pieces[-1], bos=False, eos=False)
        ids += tail
        seq_mask += [False] * len(tail)
        if bos:
            ids, seq_mask = [self.bos_id] + ids, [False] + seq_mask
        if eos:
            ids, seq_mask = ids + [self.eos_id], seq_mask + [False]
        return ids, views, seq_mask, grids, counts

    def format_messages(self, conversations: list[dict], sft_format: str = "deepseek",
                        system_prompt: str = "") -> str:
        """The conversation as one string in the chat template (the `sft_format` output field)."""
        turns = [(m["role"], m["content"].strip()) for m in conversations]
        return render_turns(turns, system_prompt).strip()

    def format_prompts(self, prompts: str, sft_format: str = "deepseek", system_prompt: str = "") -> str:
        return render_turns([(USER, prompts.strip()), (ASSISTANT, "")], system_prompt).strip()

    def format_messages_v2(self, messages: list[dict], images: list):
        """Tokenizes turn by turn as the official code does: bos once; user turns rendered with the template and
        masked out of the labels when `mask_prompt`; assistant turns as content + eos; a leading system turn as
        plain text. The `system_prompt` argument of `__call__` only reaches `sft_format`, as in the official code."""
        ids, labels, seq_mask, views, grids, counts = [self.bos_id], [self.bos_id], [False], [], [], []
        cropping = len(images) <= 2
        image_index = 0
        for index, message in enumerate(messages):
            role, content = message["role"], str(message["content"]).strip()
            if role in (USER, "user"):
                turn = render_turns([(USER, content), (ASSISTANT, "")])
                n_images = turn.count(self.image_token)
                turn_ids, turn_views, turn_mask, turn_grids, turn_counts = self.tokenize_with_images(
                    turn, images[image_index:image_index + n_images], bos=False, eos=False, cropping=cropping)
                image_index += n_images
                views, grids, counts = views + turn_views, grids + turn_grids, counts + turn_counts
                turn_labels = [self.ignore_id] * len(turn_ids) if self.mask_prompt else turn_ids
            elif role in (ASSISTANT, "assistant"):
                if self.image_token in content:
                    raise ValueError(f"an assistant message cannot contain {self.image_token}")
                turn_ids = turn_labels = self.encode(content, bos=False, eos=True)
                turn_mask = [False] * len(turn_ids)
            elif role in ("system", "deepseekapi-sys"):
                if index != 0:
                    raise ValueError("a system message can only be the first message")
                turn_ids = self.encode(content, bos=False, eos=False)
                turn_labels = [self.ignore_id] * len(turn_ids) if self.mask_prompt else turn_ids
                turn_mask = [False] * len(turn_ids)
            else:
                raise ValueError(f"unknown role {role!r}: use {USER!r}/'user', {ASSISTANT!r}/'assistant' or 'system'")
            ids, labels, seq_mask = ids + turn_ids, labels + turn_labels, seq_mask + turn_mask
        if image_index != len(images):
            raise ValueError(f"the messages have {image_index} {self.image_token} tags but {len(images)} images "
                             "were given; pass one image per tag")
        return ids, labels, views, seq_mask, grids, counts

    def process_one(self, prompt: str | None = None, conversations: list[dict] | None = None,
                    images: list | None = None, apply_sft_format: bool = False, inference_mode: bool = True,
                    system_prompt: str = "", **unused) -> VLChatProcessorOutput:
        if (prompt is None) == (conversations is None):
            raise ValueError("pass exactly one of prompt= and conversations=")
        images = list(images or [])
        if prompt is None:
            sft_format = self.format_messages(conversations, system_prompt=system_prompt)
            ids, labels, views, seq_mask, grids, counts = self.format_messages_v2(conversations, images)
        else:
            sft_format = self.format_prompts(prompt, system_prompt=system_prompt) if apply_sft_format else prompt
            ids, views, seq_mask, grids, counts = self.tokenize_with_images(
                sft_format, images, bos=True, eos=True, cropping=len(images) <= 2)
            labels = list(ids)
        input_ids = torch.tensor(ids, dtype=torch.long)
        target_ids = torch.tensor(labels, dtype=torch.long)
        images_seq_mask = torch.tensor(seq_mask, dtype=torch.bool)
        target_ids[(input_ids < 0) | (input_ids == self.image_token_id)] = self.ignore_id
        input_ids[input_ids < 0] = self.pad_id
        if inference_mode and len(input_ids) and input_ids[-1] == self.eos_id:
            # the prompt must end where the assistant's answer starts
            input_ids, target_ids, images_seq_mask = input_ids[:-1], target_ids[:-1], images_seq_mask[:-1]
        if views:
            pixel_views = torch.stack(views)
            spatial_crop = torch.tensor(grids, dtype=torch.long)
        else:  # text only: one blank view and a [0, 0] grid, as the official processor
            pixel_views = torch.zeros(1, 3, self.image_size, self.image_size)
            spatial_crop = torch.zeros(1, 2, dtype=torch.long)
        return VLChatProcessorOutput(sft_format=sft_format, input_ids=input_ids, target_ids=target_ids,
                                     images=pixel_views, images_seq_mask=images_seq_mask,
                                     images_spatial_crop=spatial_crop, num_image_tokens=counts)

    def __call__(self, *, prompt: str | None = None, conversations: list[dict] | None = None,
                 images: list | None = None, apply_sft_format: bool = False, force_batchify: bool = True,
                 inference_mode: bool = True, system_prompt: str = "", **unused):
        sample = self.process_one(prompt=prompt, conversations=conversations, images=images,
                                  apply_sft_format=apply_sft_format, inference_mode=inference_mode,
                                  system_prompt=system_prompt)
        return self.batchify([sample]) if force_batchify else sample

    def batchify(self, samples: list[VLChatProcessorOutput], padding: str = "left") -> BatchCollateOutput:
        """Pads samples into one batch: sequences on the left (default) or right, views and grids with zeros."""
        if padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left' or 'right', not {padding!r}")
        seq_lens = [len(s) for s in samples]
        longest = max(seq_lens)

        def pad(rows, value, dtype):
            out = torch.full((len(rows), longest), value, dtype=dtype)
            for i, row in enumerate(rows):
                if padding == "left":
                    out[i, longest - len(row):] = row
                else:
                    out[i, :len(row)] = row
            return out

        input_ids = pad([s.input_ids for s in samples], self.pad_id, torch.long)
        labels = pad([s.target_ids for s in samples], self.ignore_id, torch.long)
        images_seq_mask = pad([s.images_seq_mask for s in samples], False, torch.bool)
        attention_mask = pad([torch.ones(n, dtype=torch.long) for n in seq_lens], 0, torch.long)
        return BatchCollateOutput(
            sft_format=[s.sft_format for s in samples], input_ids=input_ids, labels=labels,
            images=_stack_padded([s.images for s in samples]), attention_mask=attention_mask,
            images_seq_mask=images_seq_mask,
            images_spatial_crop=_stack_padded([s.images_spatial_crop for s in samples]), seq_lens=seq_lens)


def _stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stacks along a new batch axis, zero-padding the first axis to the longest."""
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, :t.shape[0]] = t
    return out
