"""DeepseekVLV2Config: the official `deepseek_vl_v2` config, read on transformers 5.

The released config.json files are diff dicts: a key equal to the official class default is absent. So every
missing key is filled with the *official* default (not the transformers default), the three sub-configs are
kept as plain dicts in the official format (they save back unchanged), and `text_config` translates
`language_config` into the transformers config of the language model that implements it:

    use_mla false                -> DeepseekOcr2TextConfig (multi-head attention + DeepSeek MoE; deepseek-vl2-tiny)
    MLA, softmax router          -> DeepseekV2Config       (deepseek-vl2-small)
    MLA, sigmoid noaux_tc router -> DeepseekV3Config       (deepseek-vl2)
"""

from __future__ import annotations

from transformers import DeepseekOcr2TextConfig, DeepseekV2Config, DeepseekV3Config, PreTrainedConfig

# Every [384 m, 384 n] with m * n <= 9, in the order of the released configs.
CANDIDATE_RESOLUTIONS = [
    [384, 384], [384, 768], [768, 384], [384, 1152], [1152, 384], [384, 1536], [1536, 384], [768, 768],
    [384, 1920], [1920, 384], [384, 2304], [2304, 384], [768, 1152], [1152, 768], [384, 2688], [2688, 384],
    [384, 3072], [3072, 384], [768, 1536], [1536, 768], [384, 3456], [3456, 384], [1152, 1152],
]

# Defaults of the official VisionEncoderConfig, MlpProjectorConfig and DeepseekV2Config classes.
VISION_DEFAULTS = {
    "model_type": "vision", "model_name": "siglip_large_patch16_384", "image_size": 384, "patch_size": 16,
    "width": 1024, "layers": 24, "heads": 16, "mlp_ratio": 4, "global_pool": "map", "ignore_head": True,
    "class_token": False, "num_classes": 0, "use_checkpoint": False,
}
PROJECTOR_DEFAULTS = {
    "model_type": "mlp_projector", "projector_type": "downsample_mlp_gelu", "input_dim": 1152, "n_embed": 2048,
    "depth": 2, "mlp_ratio": 1, "downsample_ratio": 2, "token_pooling": False,
}
LANGUAGE_DEFAULTS = {
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 4096, "intermediate_size": 11008,
    "moe_intermediate_size": 1407, "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 32,
    "n_shared_experts": None, "n_routed_experts": None, "ep_size": 1, "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "gready", "n_group": None, "topk_group": None, "num_experts_per_tok": None, "moe_layer_freq": 1,
    "first_k_dense_replace": 0, "norm_topk_prob": False, "scoring_func": "softmax", "aux_loss_alpha": 0.001,
    "seq_aux": True, "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02,
    "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": None, "bos_token_id": 100000,
    "eos_token_id": 100001, "tie_word_embeddings": False, "rope_theta": 10000, "rope_scaling": None,
    "attention_bias": False, "attention_dropout": 0.0, "use_mla": True,
}


def _filled(defaults: dict, given: dict | None) -> dict:
    return {**defaults, **(given or {})}


class DeepseekVLV2Config(PreTrainedConfig):
    model_type = "deepseek_vl_v2"

    vision_config: dict | None = None
    projector_config: dict | None = None
    language_config: dict | None = None
    tile_tag: str = "2D"
    global_view_pos: str = "head"
    candidate_resolutions: list | None = None
    image_token_id: int | None = None  # not in the released files; set by the adapter from the tokenizer

    def __post_init__(self, **kwargs):
        self.vision_config = _filled(VISION_DEFAULTS, self.vision_config)
        self.projector_config = _filled(PROJECTOR_DEFAULTS, self.projector_config)
        self.language_config = _filled(LANGUAGE_DEFAULTS, self.language_config)
        if self.candidate_resolutions is None:
            self.candidate_resolutions = [list(r) for r in CANDIDATE_RESOLUTIONS]
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        """Reject what the port does not implement, rather than computing something else."""
        lang, projector = self.language_config, self.projector_config
        problems = []
        if self.tile_tag != "2D":
            problems.append(f"tile_tag={self.tile_tag!r} (the official '1D' path is dead code; only '2D')")
        if projector["projector_type"] != "downsample_mlp_gelu" or projector["token_pooling"]:
            problems.append(f"projector_type={projector['projector_type']!r} (token_pooling="
                            f"{projector['token_pooling']}); only downsample_mlp_gelu without token pooling")
        if self.vision_config["class_token"]:
            problems.append("a vision tower with a class token")
        if lang["rope_scaling"]:
            problems.append(f"rope_scaling={lang['rope_scaling']!r}")
        if not lang["n_routed_experts"]:
            problems.append("a dense language model (n_routed_experts is null)")
        router = (lang["topk_method"], lang["scoring_func"])
        if router not in {("greedy", "softmax"), ("group_limited_greedy", "softmax"), ("noaux_tc", "sigmoid")}:
            problems.append(f"router topk_method={router[0]!r} with scoring_func={router[1]!r}")
        if router[1] == "softmax" and lang["norm_topk_prob"]:
            problems.append("norm_topk_prob with a softmax router")
        if lang["use_mla"] and lang["moe_layer_freq"] != 1:
            problems.append(f"moe_layer_freq={lang['moe_layer_freq']} with MLA")
        if not lang["use_mla"] and router[0] == "noaux_tc":
            problems.append("the noaux_tc router without MLA")
        if problems:
            raise ValueError("DeepSeek-VL2 config not supported by this port: " + "; ".join(problems))

    @property
    def text_config(self) -> PreTrainedConfig:
        """The transformers config of the language model (built once, never serialized)."""
        cached = self.__dict__.get("_text_config")
        if cached is None:
            cached = _language_to_transformers(self.language_config)
            cached._attn_implementation = self._attn_implementation
            self.__dict__["_text_config"] = cached
        return cached

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_text_config", None)
        if output.get("image_token_id") is None:
            output.pop("image_token_id", None)
        return output


def _language_to_transformers(lang: dict) -> PreTrainedConfig:
    num_layers = lang["num_hidden_layers"]
    common = dict(
        vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"], intermediate_size=lang["intermediate_size"],
        moe_intermediate_size=lang["moe_intermediate_size"], num_hidden_layers=num_layers,
        num_attention_heads=lang["num_attention_heads"], num_key_value_heads=lang["num_key_value_heads"],
        n_shared_experts=lang["n_shared_experts"] or 0, n_routed_experts=lang["n_routed_experts"],
        num_experts_per_tok=lang["num_experts_per_tok"], routed_scaling_factor=lang["routed_scaling_factor"],
        n_group=lang["n_group"], topk_group=lang["topk_group"], hidden_act=lang["hidden_act"],
        max_position_embeddings=lang["max_position_embeddings"], rms_norm_eps=lang["rms_norm_eps"],
        bos_token_id=lang["bos_token_id"], eos_token_id=lang["eos_token_id"], pad_token_id=lang["pad_token_id"],
        tie_word_embeddings=lang["tie_word_embeddings"], attention_bias=lang["attention_bias"],
        attention_dropout=lang["attention_dropout"], initializer_range=lang["initializer_range"],
        rope_parameters={"rope_type": "default", "rope_theta": float(lang["rope_theta"])},
    )
    if not lang["use_mla"]:
        # Official MoE layers: index >= first_k_dense_replace and index % moe_layer_freq == 0.
        first_dense, freq = lang["first_k_dense_replace"], lang["moe_layer_freq"]
        layer_types = ["sparse" if i >= first_dense and i % freq == 0 else "dense" for i in range(num_layers)]
        return DeepseekOcr2TextConfig(**common, topk_method=lang["topk_method"], mlp_layer_types=layer_types)
    mla = dict(kv_lora_rank=lang["kv_lora_rank"], q_lora_rank=lang["q_lora_rank"],
               qk_nope_head_dim=lang["qk_nope_head_dim"], qk_rope_head_dim=lang["qk_rope_head_dim"],
               v_head_dim=lang["v_head_dim"], first_k_dense_replace=lang["first_k_dense_replace"])
    if lang["topk_method"] == "noaux_tc":
        return DeepseekV3Config(**common, **mla, norm_topk_prob=lang["norm_topk_prob"], rope_interleave=True)
    return DeepseekV2Config(**common, **mla, topk_method=lang["topk_method"])
