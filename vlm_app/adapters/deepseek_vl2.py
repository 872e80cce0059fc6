"""DeepSeek-VL2 through our transformers-5 port (`vlm_app.models.deepseek_vl2`).

The model has no video input: a video becomes its sampled frames as images, each preceded by its real time
("Frame at 00:05: <image>"). Every frame costs 421 visual tokens once a conversation holds three or more images
(tiling is then off), so the number of frames is computed from the context (4096 tokens), the prompt's own
tokens and the answer budget (`max_new_tokens`, default 512), never guessed; several videos share the room.
"""

from __future__ import annotations

import math

from PIL import Image

from vlm_app.adapters.base import Adapter, VisualMap
from vlm_app.errors import LimitError, OptionsError
from vlm_app.memory import ModelDims, RequestShape, TextDims, VisionDims
from vlm_app.media.policies import SamplingPolicy
from vlm_app.messages import normalize

USER, ASSISTANT = "<|User|>", "<|Assistant|>"
VIEWS_PER_FRAME = 2  # an untiled frame is a global view and one local view, each a 384 x 384 image


def frame_label(seconds: float) -> str:
    """'Frame at MM:SS: ' (H:MM:SS past an hour) before each frame's <image>."""
    whole = int(seconds)
    hours, minutes, secs = whole // 3600, whole % 3600 // 60, whole % 60
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
    return f"Frame at {clock}: "


def _frame_image(frame) -> Image.Image:
    return Image.fromarray(frame.permute(1, 2, 0).contiguous().numpy())


CONTEXT_TOKENS = 4096
TOKENS_PER_FRAME = 421  # one untiled 384 view: 14*15 global + 1 separator + 14*15 local
TEXT_TOKENS_PER_FRAME = 10  # "Frame at MM:SS:" line around each <image>
DEFAULT_PROMPT_TOKENS = 128
DEFAULT_MAX_NEW_TOKENS = 512

# deepseek-ai/deepseek-vl2-tiny / -small / deepseek-vl2: the per-size table of the shared DeepSeek-VL2 fact sheet
# (reference/deepseek_vl2.md §1.3, transcribed by third parties from the released config.json files). Small's
# vocab is the V2 tokenizer's 102400 (the paper); with it the parameter count matches the published 16.1B.
REAL_VISION = dict(model_name="siglip_so400m_patch14_384", image_size=384, patch_size=14, width=1152,
                   layers=27, heads=16, mlp_ratio=3.7362)
REAL_MLA = dict(kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
REAL_MOE = dict(n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1,
                n_group=1, topk_group=1, max_position_embeddings=4096)
REAL_SIZE_NAMES = ("tiny", "small", "base")


def real_size_configs() -> dict:
    """The language configs of the released sizes (built on first use: the attention and router kinds live with
    the tiny builder)."""
    from vlm_app.testing.tiny_deepseek_vl2 import MHA_ATTENTION, NOAUX_ROUTER, SOFTMAX_ROUTER

    return {
        "tiny": dict(hidden_size=1280, intermediate_size=6848, moe_intermediate_size=896, num_hidden_layers=12,
                     num_attention_heads=10, num_key_value_heads=10, n_routed_experts=64, vocab_size=129280,
                     **MHA_ATTENTION, **SOFTMAX_ROUTER),
        "small": dict(hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
                      num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, vocab_size=102400,
                      **REAL_MLA, **SOFTMAX_ROUTER),
        "base": dict(hidden_size=2560, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=32, num_key_value_heads=32, n_routed_experts=72, vocab_size=129280,
                     **REAL_MLA, **NOAUX_ROUTER),
    }


def deepseek_max_frames(prompt_tokens: int, max_new_tokens: int, context_tokens: int = CONTEXT_TOKENS,
                        tokens_per_frame: int = TOKENS_PER_FRAME,
                        text_tokens_per_frame: int = TEXT_TOKENS_PER_FRAME) -> int:
    """How many untiled frames fit in DeepSeek-VL2's context next to the prompt and the answer."""
    room = context_tokens - prompt_tokens - max_new_tokens
    return max(room // (tokens_per_frame + text_tokens_per_frame), 0)


def deepseek_vl2_policy() -> SamplingPolicy:
    """Frames become untiled images (421 tokens each) inside a 4096-token context, so the frame count is computed
    (`deepseek_max_frames`; the adapter sizes it by the real prompt). No resize here: the processor pads each frame
    to 384²."""
    return SamplingPolicy(name="deepseek_vl2", index_rule="qwen", fps=1.0, min_frames=1,
                          max_frames=deepseek_max_frames(DEFAULT_PROMPT_TOKENS, DEFAULT_MAX_NEW_TOKENS),
                          tokens_per_frame=TOKENS_PER_FRAME)


class DeepseekVL2Adapter(Adapter):
    family = "deepseek_vl2"
    model_types = ("deepseek_vl_v2",)
    short_names = {"deepseek-vl2-tiny": "deepseek-ai/deepseek-vl2-tiny",
                   "deepseek-vl2-small": "deepseek-ai/deepseek-vl2-small", "deepseek-vl2": "deepseek-ai/deepseek-vl2"}
    hub_pattern = r"deepseek-vl2"
    policies = {"deepseek_vl2": deepseek_vl2_policy}
    policy = "deepseek_vl2"
    tiny = {"deepseek_vl2": "vlm_app.testing.tiny_deepseek_vl2:build_tiny_deepseek_vl2"}
    real_sizes = REAL_SIZE_NAMES

    @classmethod
    def visual_tokens(cls, video, model_name: str) -> int:
        """421 a frame once a conversation holds three or more images (tiling is then off)."""
        return len(video.frames_indices) * TOKENS_PER_FRAME

    @classmethod
    def frame_labels(cls, video) -> list[str]:
        return [frame_label(seconds).rstrip() for seconds in video.timestamps]

    @classmethod
    def load_model(cls, path: str, **from_pretrained_kwargs):
        from vlm_app.models.deepseek_vl2 import DeepseekVLV2ForCausalLM

        model = DeepseekVLV2ForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
        # the released generation_config.json holds no stop token; the language config has it
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = model.config.language_config["eos_token_id"]
        return model

    @classmethod
    def load_processor(cls, path: str):
        from vlm_app.models.deepseek_vl2 import DeepseekVLV2Processor

        return DeepseekVLV2Processor.from_pretrained(path)

    @classmethod
    def load_config(cls, path: str):
        from vlm_app.models.deepseek_vl2 import DeepseekVLV2Config

        return DeepseekVLV2Config.from_pretrained(path)

    @property
    def num_layers(self) -> int:
        return self.config.language_config["num_hidden_layers"]

    @property
    def context_tokens(self) -> int:
        return self.config.language_config["max_position_embeddings"]

    def decode(self, token_ids: list[int]) -> str:
        """Keeps the grounding tags: `<|ref|>`, `<|det|>`, ... are special tokens, and the answer's boxes are
        written with them (`vlm_app.grounding` parses them). Only sentence bounds and padding are dropped."""
        dropped = {self.processor.bos_id, self.processor.eos_id, self.processor.pad_id}
        return self.tokenizer.decode([t for t in token_ids if t not in dropped], skip_special_tokens=False)

    # ---- prepare -------------------------------------------------------------------------------------------

    def build_inputs(self, messages: list[dict], media: list, max_new_tokens: int | None = None):
        """Frames as timestamped images; the prompt and a `max_new_tokens` answer (None: 512) must fit the context."""
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        conversation, images, owners = self._conversation(messages, media)
        batch = self.processor(conversations=conversation, images=images, force_batchify=True)
        length = batch.input_ids.shape[1]
        self.check_context(length, max_new_tokens)
        inputs = {name: batch[name] for name in
                  ("input_ids", "attention_mask", "images", "images_seq_mask", "images_spatial_crop")}
        return inputs, self._visual_map(batch, media, owners), batch.sft_format[0]

    def video_options(self, messages: list[dict], overrides: dict, item_options: dict | None = None,
                      max_new_tokens: int | None = None) -> dict:
        """Videos get at most the frames that fit next to the prompt and a `max_new_tokens` answer (None: 512)."""
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        budget = self.frame_budget(normalize(messages), max_new_tokens)
        return super().video_options(messages, {**overrides, "max_frames": budget}, item_options, max_new_tokens)

    def frame_budget(self, messages: list[dict], max_new_tokens: int) -> int:
        """Frames each video may have: the context left after the prompt (with every video removed) and the
        answer, divided by one frame's cost (421 visual tokens + its time label), shared among the videos."""
        videos = sum(item["type"] == "video" for m in messages for item in m["content"])
        if not videos:
            return 0
        without_videos = [{**m, "content": [i for i in m["content"] if i["type"] != "video"]} for m in messages]
        images = sum(item["type"] == "image" for m in without_videos for item in m["content"])
        conversation, _, _ = self._conversation(without_videos, [None] * images)
        prompt_tokens = len(self.processor.encode(
            self.processor.format_messages(conversation).replace(self.processor.image_token, ""), bos=True))
        prompt_tokens += images * self.processor.num_image_tokens_for(1, 1)
        label_tokens = len(self.processor.encode(frame_label(0) + "\n", bos=False))
        frames = deepseek_max_frames(prompt_tokens, max_new_tokens, context_tokens=self.context_tokens,
                                     tokens_per_frame=self.processor.num_image_tokens_for(1, 1),
                                     text_tokens_per_frame=label_tokens + 1) // videos
        if frames < 1:
            raise LimitError(f"no video frame fits in the {self.context_tokens}-token context next to a "
                             f"{prompt_tokens}-token prompt and a {max_new_tokens}-token answer; shorten the "
                             "prompt or lower max_new_tokens")
        return frames

    def _conversation(self, messages: list[dict], media: list) -> tuple[list[dict], list, list]:
        """DeepSeek conversation turns, the PIL images in order, and per image its (media index, frame index).
        Each image and frame goes where its item is, unless the text places the message's images itself with
        literal `<image>` tags, as the model card's prompts do (then one tag per image of the message)."""
        tag = self.processor.image_token
        turns, images, owners = [], [], []
        media_iter = iter(enumerate(media))
        for message in messages:
            items = [(item, None if item["type"] == "text" else next(media_iter)) for item in message["content"]]
            tags = sum(item["text"].count(tag) for item, _ in items if item["type"] == "text")
            placed = [entry for item, entry in items if item["type"] == "image"]
            if tags and tags != len(placed):
                raise OptionsError(f"the prompt text holds {tags} literal {tag} tag(s) but the message has "
                                   f"{len(placed)} image(s); use one {tag} per image, or none (each image then "
                                   "goes where it is in the message)")
            by_tag = iter(placed if tags else [])
            text = ""
            for item, entry in items:
                if item["type"] == "text":
                    text += item["text"]
                    shown_here = [next(by_tag) for _ in range(item["text"].count(tag))]
                elif item["type"] == "video":
                    media_index, video = entry
                    for frame_index, (frame, seconds) in enumerate(zip(video.frames, video.timestamps)):
                        text += frame_label(seconds) + tag + "\n"
                        images.append(_frame_image(frame))
                        owners.append((media_index, frame_index))
                    shown_here = []
                else:  # an image: at its tag, or here
                    text += "" if tags else tag + "\n"
                    shown_here = [] if tags else [entry]
                for media_index, shown in shown_here:
                    images.append(shown.image if shown is not None else None)
                    owners.append((media_index, -1))
            role = {"user": USER, "assistant": ASSISTANT}.get(message["role"], message["role"])
            turns.append({"role": role, "content": text})
        turns.append({"role": ASSISTANT, "content": ""})
        return turns, images, owners

    def _visual_map(self, batch, media: list, owners: list[tuple[int, int]]) -> VisualMap:
        """Per image: the global view (its newlines and the view separator included) is tile 0, then each local
        token belongs to the tile it was cut from (a row's newline to that row's last tile)."""
        from vlm_app.media import SampledVideo

        side = self.processor.tokens_per_side
        spans = []
        for (media_index, frame_index), (grid_w, grid_h) in zip(owners, batch.images_spatial_crop[0].tolist()):
            tiles = [0] * (side * (side + 1) + 1)
            for row in range(grid_h * side):
                columns = [min(col, grid_w * side - 1) // side for col in range(grid_w * side + 1)]
                tiles += [1 + (row // side) * grid_w + column for column in columns]
            item = media[media_index]
            seconds = item.timestamps[frame_index] if isinstance(item, SampledVideo) else math.nan
            spans.append({"token_id": self.processor.image_token_id, "media_index": media_index,
                          "frame_index": [frame_index] * len(tiles), "tile_index": tiles, "timestamp": seconds})
        return VisualMap.from_spans(batch.input_ids, spans)

    # ---- batching ------------------------------------------------------------------------------------------------
    def collate(self, inputs_list: list[dict]) -> dict:
        """As the processor's `batchify`: sequences left-padded, each row's views and tile grids stacked and
        zero-padded."""
        from vlm_app.batching import collate_rows

        return collate_rows(inputs_list, {"input_ids": self.processor.pad_id, "attention_mask": 0,
                                          "images_seq_mask": False}, stacked={"images": 0, "images_spatial_crop": 0})

    # ---- memory ----------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        """Multi-head attention caches keys and values of every head; multi-head latent attention (small, base)
        caches them decompressed too, as transformers' DeepSeek models do. A token passes through the shared
        experts and its routed ones, or the dense MLP of the first layers, whichever is wider."""
        lang, vision = self.config.language_config, self.config.vision_config
        heads = lang["num_attention_heads"]
        if lang.get("use_mla", True) and lang.get("kv_lora_rank"):
            kv_width = heads * (lang["qk_nope_head_dim"] + lang["qk_rope_head_dim"] + lang["v_head_dim"])
        else:
            kv_width = 2 * lang["num_key_value_heads"] * (lang["hidden_size"] // heads)
        experts = lang["moe_intermediate_size"] * (lang["n_shared_experts"] + lang["num_experts_per_tok"])
        dense = lang["intermediate_size"] if lang.get("first_k_dense_replace", 0) else 0
        return ModelDims(text=TextDims(hidden=lang["hidden_size"], mlp_width=max(dense, experts),
                                       layers=lang["num_hidden_layers"], kv_width=kv_width, vocab=lang["vocab_size"]),
                         vision=VisionDims(hidden=vision["width"], mlp_width=int(vision["width"] * vision["mlp_ratio"]),
                                           heads=vision["heads"]))

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        from vlm_app.media.video import choose_frames

        frames = len(choose_frames(metadata, self.sampling_policy(options), options)[0])
        side = self.processor.image_size
        native = frames * 3 * metadata.height * metadata.width
        views = frames * VIEWS_PER_FRAME
        shape = RequestShape(text_tokens=frames * 10, visual_tokens=frames * self.processor.num_image_tokens_for(1, 1),
                             encoder_sequences=views, encoder_sequence=(side // self.processor.patch_size) ** 2,
                             media_bytes=2 * native + views * 3 * side * side * 4)  # uint8 frames, PIL copies, float32
        return shape, frames, 0

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        images = inputs.get("images")
        if images is None or not images.numel():
            return 0, 0
        views = int(images.shape[0] * images.shape[1])
        return views, (images.shape[-1] // self.processor.patch_size) ** 2

    # ---- real sizes (bench model) -------------------------------------------------------------------------------
    @classmethod
    def real_size(cls, size: str, layers: tuple[int, int] | None = None):
        """(model class, config, processor) of a published size with our tokenizer; `layers` (vision, text) makes
        a reduced model of the real widths."""
        from vlm_app.models.deepseek_vl2 import DeepseekVLV2Config, DeepseekVLV2ForCausalLM
        from vlm_app.testing.tiny_deepseek_vl2 import deepseek_vl2_processor

        spec = real_size_configs()[size]
        spec = spec if layers is None else {**spec, "num_hidden_layers": layers[1]}
        vision = REAL_VISION if layers is None else {**REAL_VISION, "layers": layers[0]}
        processor = deepseek_vl2_processor()
        tokenizer = processor.tokenizer
        config = DeepseekVLV2Config(
            vision_config=vision, projector_config={"n_embed": spec["hidden_size"]},
            language_config={**spec, **REAL_MOE, "bos_token_id": tokenizer.bos_token_id,
                             "eos_token_id": tokenizer.eos_token_id})
        return DeepseekVLV2ForCausalLM, config, processor


ADAPTER = DeepseekVL2Adapter
