"""Model ports that current transformers does not ship (see `deepseek_vl2`)."""
