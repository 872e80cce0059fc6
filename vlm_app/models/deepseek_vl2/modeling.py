"""DeepseekVLV2ForCausalLM: the official DeepSeek-VL2 model on transformers 5, same module tree and weight names.

    vision          SigLIP-style ViT in timm's layout (27x27 patches at 384 px, no class token, output after the
                    final LayerNorm); `attn_pool` (the MAP head) is kept only so checkpoints round-trip, the model
                    never uses it
    projector       2x2 downsample (zero-pad odd grids, unfold) then Linear-GELU-Linear
    image_newline,  learned embeddings: one after every row of visual tokens, one between the global view and
    view_seperator  the local tiles (the checkpoint key keeps the official spelling)
    language        transformers' own DeepSeek language models: DeepseekOcr2TextModel + lm_head for multi-head
                    attention (tiny), DeepseekV2ForCausalLM (small), DeepseekV3ForCausalLM (base). The official
                    per-expert weights are fused on load and split again on save by transformers' conversion
                    mapping for these classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (DeepseekOcr2TextConfig, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, GenerationMixin,
                          PreTrainedModel)
from transformers.conversion_mapping import (get_checkpoint_conversion_mapping,
                                             register_checkpoint_conversion_mapping)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (DeepseekOcr2TextModel,
                                                                      DeepseekOcr2TextPreTrainedModel)
from transformers.models.siglip.modeling_siglip import eager_attention_forward

from .configuration import DeepseekVLV2Config

# --- vision tower ---------------------------------------------------------------------------------------------


class VisionAttention(nn.Module):
    is_causal = False

    def __init__(self, width: int, heads: int, config: DeepseekVLV2Config):
        super().__init__()
        self.heads, self.head_dim, self.config = heads, width // heads, config
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        implementation = self.config._attn_implementation or "sdpa"
        attend = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        out, _ = attend(self, q, k, v, None, scaling=self.head_dim ** -0.5, dropout=0.0)
        return self.proj(out.reshape(batch, length, width))


class VisionMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int, config: DeepseekVLV2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisionAttention(width, heads, config)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VisionMlp(width, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionPoolWeights(nn.Module):
    """The timm MAP head's parameters (latent, q, kv, proj, norm, mlp). Present in the checkpoints, unused."""

    def __init__(self, width: int, mlp_hidden: int):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VisionMlp(width, mlp_hidden)


class VisionTower(nn.Module):
    def __init__(self, config: DeepseekVLV2Config):
        super().__init__()
        vision = config.vision_config
        width, patch = vision["width"], vision["patch_size"]
        mlp_hidden = int(width * vision["mlp_ratio"])
        grid = vision["image_size"] // patch  # the conv drops the remainder: 384 px / 14 -> 27 patches
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, width))
        self.blocks = nn.ModuleList(VisionBlock(width, vision["heads"], mlp_hidden, config)
                                    for _ in range(vision["layers"]))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        if vision["global_pool"] == "map":
            self.attn_pool = AttentionPoolWeights(width, mlp_hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, 384, 384) -> (tiles, 729, width)"""
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Projector(nn.Module):
    def __init__(self, config: DeepseekVLV2Config):
        super().__init__()
        cfg = config.projector_config
        self.ratio = cfg["downsample_ratio"]
        hidden = cfg["n_embed"] * cfg["mlp_ratio"]
        layers = [nn.Linear(cfg["input_dim"] * self.ratio ** 2, hidden)]
        for _ in range(cfg["depth"] - 2):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, cfg["n_embed"])]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(tiles, side*side, C) -> (tiles, ceil(side/2)^2, n_embed); odd grids get a zero row and column."""
        tiles, length, channels = x.shape
        side = int(length ** 0.5)
        pad = -side % self.ratio
        x = x.view(tiles, side, side, channels)
        x = F.pad(x, (0, 0, 0, pad, 0, pad)).permute(0, 3, 1, 2)
        x = F.unfold(x, kernel_size=self.ratio, stride=self.ratio).transpose(1, 2)
        return self.layers(x)


# --- language model for the multi-head-attention variant (deepseek-vl2-tiny) ---------------------------------


class DeepseekVLV2MHAForCausalLM(DeepseekOcr2TextPreTrainedModel, GenerationMixin):
    """DeepseekOcr2TextModel (LlamaAttention-style MHA + DeepSeek MoE, the VL2-tiny LM) with its lm_head."""

    def __init__(self, config: DeepseekOcr2TextConfig):
        super().__init__(config)
        self.model = DeepseekOcr2TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep: int = 0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         **kwargs)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)


# The official checkpoints store one tensor per expert; fuse them like the other DeepSeek MoE models.
register_checkpoint_conversion_mapping(DeepseekVLV2MHAForCausalLM.__name__,
                                       get_checkpoint_conversion_mapping("qwen2_moe"), overwrite=True)


def build_language_model(config: DeepseekVLV2Config) -> PreTrainedModel:
    text_config = config.text_config
    if isinstance(text_config, DeepseekOcr2TextConfig):
        return DeepseekVLV2MHAForCausalLM(text_config)
    if text_config.model_type == "deepseek_v3":
        return DeepseekV3ForCausalLM(text_config)
    return DeepseekV2ForCausalLM(text_config)


# --- the whole model ------------------------------------------------------------------------------------------


class DeepseekVLV2PreTrainedModel(PreTrainedModel):
    config_class = DeepseekVLV2Config
    config: DeepseekVLV2Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["VisionBlock", "DeepseekOcr2TextDecoderLayer", "DeepseekV2DecoderLayer",
                         "DeepseekV3DecoderLayer"]
    _keep_in_fp32_modules_strict = ["e_score_correction_bias"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeepseekVLV2ForCausalLM):
            std = module.config.projector_config["n_embed"] ** -0.5
            nn.init.normal_(module.image_newline, std=std)
            nn.init.normal_(module.view_seperator, std=std)
        elif isinstance(module, VisionTower):
            nn.init.trunc_normal_(module.pos_embed, std=0.02)
        elif isinstance(module, AttentionPoolWeights):
            nn.init.trunc_normal_(module.latent, std=module.latent.shape[-1] ** -0.5)


class DeepseekVLV2ForCausalLM(DeepseekVLV2PreTrainedModel, GenerationMixin):
    def __init__(self, config: DeepseekVLV2Config):
        super().__init__(config)
        config.text_config._attn_implementation = config._attn_implementation
        n_embed = config.projector_config["n_embed"]
        self.vision = VisionTower(config)
        self.projector = Projector(config)
        self.image_newline = nn.Parameter(torch.zeros(n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(n_embed))
        self.language = build_language_model(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language.get_output_embeddings()

    # --- images -> embeddings ---------------------------------------------------------------------------------

    def get_image_features(self, images: torch.Tensor, images_spatial_crop: torch.Tensor) -> list[torch.Tensor]:
        """One (num_image_tokens, n_embed) tensor per image, in batch then image order.

        images: (B, max_tiles, 3, H, W), each sample's views packed as global then local tiles per image;
        images_spatial_crop: (B, max_images, 2) [num_width_tiles, num_height_tiles], [0, 0] ends a sample."""
        grids_per_sample = [[(int(w), int(h)) for w, h in sample.tolist() if w > 0 and h > 0]
                            for sample in images_spatial_crop]
        tiles = [images[b, :sum(1 + w * h for w, h in grids)] for b, grids in enumerate(grids_per_sample)]
        tiles = torch.cat(tiles).to(dtype=self.vision.pos_embed.dtype)
        if tiles.shape[0] == 0:
            return []
        embeds = self.projector(self.vision(tiles))
        features, start = [], 0
        for grids in grids_per_sample:
            for grid_w, grid_h in grids:
                features.append(self._image_sequence(embeds[start:start + 1 + grid_w * grid_h], grid_w, grid_h))
                start += 1 + grid_w * grid_h
        return features

    def _image_sequence(self, tiles: torch.Tensor, grid_w: int, grid_h: int) -> torch.Tensor:
        """Global view and local tiles as rows of tokens, each row ended by `image_newline`, the two views
        separated by `view_seperator`; global first when `global_view_pos` is "head"."""
        _, length, dim = tiles.shape
        side = int(length ** 0.5)
        global_view = self._rows_with_newlines(tiles[0].view(side, side, dim))
        local = tiles[1:].view(grid_h, grid_w, side, side, dim).permute(0, 2, 1, 3, 4)
        local_view = self._rows_with_newlines(local.reshape(grid_h * side, grid_w * side, dim))
        separator = self.view_seperator[None].to(tiles.dtype)
        views = [global_view, separator, local_view]
        return torch.cat(views if self.config.global_view_pos == "head" else views[::-1])

    def _rows_with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        rows, _, dim = grid.shape
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, dim)
        return torch.cat([grid, newline], dim=1).view(-1, dim)

    def prepare_inputs_embeds(self, input_ids: torch.LongTensor, images: torch.Tensor | None = None,
                              images_seq_mask: torch.Tensor | None = None,
                              images_spatial_crop: torch.Tensor | None = None, **unused) -> torch.Tensor:
        """Token embeddings with the image features written, in order, at the `images_seq_mask` positions."""
        embeds = self.get_input_embeddings()(input_ids)
        if images is None or images_spatial_crop is None or images_spatial_crop.sum() == 0:
            return embeds
        if images_seq_mask is None:
            images_seq_mask = input_ids == self.config.image_token_id
        features = self.get_image_features(images, images_spatial_crop)
        if not features:
            return embeds
        features = torch.cat(features).to(embeds.dtype)
        mask = images_seq_mask.to(device=embeds.device, dtype=torch.bool)
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"the prompt has {int(mask.sum())} image-token positions but the images give "
                             f"{features.shape[0]} features; build the inputs with DeepseekVLV2Processor")
        embeds = embeds.clone()
        embeds[mask] = features
        return embeds

    # --- forward and generate ---------------------------------------------------------------------------------

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, images=None, images_seq_mask=None, images_spatial_crop=None, labels=None,
                use_cache=None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.prepare_inputs_embeds(input_ids, images, images_seq_mask, images_spatial_crop)
        out = self.language(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, labels=labels, use_cache=use_cache,
                            logits_to_keep=logits_to_keep, **kwargs)
        # as the official model: float32 logits whatever the weights' dtype
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits.float(), past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)

    @torch.no_grad()
    def prefill(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, chunk_size: int):
        """Runs the language model over the prompt `chunk_size` tokens at a time; returns the filled cache.
        Peak activation memory then grows with the chunk, not with the prompt (the official
        `incremental_prefilling`)."""
        cache = None
        for start in range(0, inputs_embeds.shape[1], chunk_size):
            end = start + chunk_size
            mask = attention_mask[:, :end] if attention_mask is not None else None
            cache = self.language(inputs_embeds=inputs_embeds[:, start:end], attention_mask=mask,
                                  past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
        return cache

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, images_seq_mask: torch.Tensor | None = None,
                 images_spatial_crop: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                 prefill_chunk_size: int | None = None, **kwargs):
        """Same inputs as `forward`; returns the prompt ids followed by the new ids (as the official
        `model.generate(input_ids=..., inputs_embeds=...)`). With `prefill_chunk_size`, a prompt longer than that
        is prefilled in chunks first."""
        if inputs_embeds is None:
            inputs_embeds = self.prepare_inputs_embeds(input_ids, images, images_seq_mask, images_spatial_crop)
        if prefill_chunk_size and inputs_embeds.shape[1] > prefill_chunk_size:
            mask = attention_mask[:, :-1] if attention_mask is not None else None
            kwargs["past_key_values"] = self.prefill(inputs_embeds[:, :-1], mask, prefill_chunk_size)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                **kwargs)
