"""Test helpers that ship with the package: offline tiny checkpoints (`tiny`), synthetic videos (`videos`)."""
