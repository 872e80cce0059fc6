"""The byte-level BPE every tiny checkpoint's tokenizer is trained with: a small fixed corpus, trained offline in
well under a second, so the same call gives the same vocabulary."""

from __future__ import annotations

import json

VOCAB_SIZE = 1024          # trained BPE entries; special tokens come after (Qwen) or first (SmolVLM)

CORPUS = """\
A red square moves from the left edge of the frame to the right edge over a blue background.
The video shows a person walking a dog in a park; later a cyclist passes by and the dog barks.
Describe this video. Summarize the video in one sentence. What happens at 00:03? List the events with timestamps.
In the first frames the scene is dark, then the lights turn on and a white progress bar grows along the bottom.
Question: how many objects are visible? Answer: two objects, a square and a bar.
The camera pans slowly across a kitchen where someone is cutting vegetables and boiling water in a pot.
Frame from 00:00: a title card. Frame from 00:01: the first scene. Frame from 00:02: a close-up of the face.
You are a helpful assistant. You are provided the following series of frames from a video.
Numbers and times: 0 1 2 3 4 5 6 7 8 9 10 24 30 60 1.5 2.0 12:30 0:00:04 [H:MM:SS] 100% 3/4.
User: what colour is the square? Assistant: the square is red and it moves to the right.
The weather is sunny, a car drives along the street, and children play football near the trees.
Café, naïve, résumé, 東京, Привет, مرحبا — unicode text should round-trip through the byte-level tokenizer.
"""


def train_bpe(pre_tokenizer, normalizer=None, leading_tokens=()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on CORPUS with the given pipeline; returns (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE + len(leading_tokens), min_frequency=1,
                                  special_tokens=list(leading_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
                            for merge in model["merges"]]
