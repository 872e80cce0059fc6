"""The Python API on a video: describe it, then look inside (inputs, visual-token map, hidden states).

    python examples/make_example_video.py          # writes examples/example.mp4
    python examples/python_api.py [MODEL]          # default smolvlm2-256m; or a checkpoint folder
                                                   # (python -m vlm_app tiny --family smolvlm2 --out /tmp/tiny)
"""

import sys
from pathlib import Path

from vlm_app import describe, load

video = str(Path(__file__).with_name("example.mp4"))
adapter = load(sys.argv[1] if len(sys.argv) > 1 else "smolvlm2-256m")

record = describe(video, model=adapter, prompt="What moves, and where does it go?",
                  generation={"max_new_tokens": 64})
print(record["answer"])
print("frames", record["frames_indices"], "at", record["timestamps"], "s")

messages = [{"role": "user", "content": [{"type": "video", "video": video, "fps": 1.0},
                                         {"type": "text", "text": "Describe this video."}]}]
prepared = adapter.prepare(messages)
print("tokens", prepared.num_tokens, "inputs", {k: tuple(v.shape) for k, v in prepared.inputs.items()})
output = adapter.forward(prepared, output_hidden_states=True)
print("layers", len(output.hidden_states), "visual tokens of the last layer", tuple(output.visual_hidden(-1).shape))
first_frame_tokens = prepared.visual_map.frame_index == 0
print("tokens of frame 0:", int(first_frame_tokens.sum()), "at", prepared.visual_map.timestamp[first_frame_tokens][0].item(), "s")

for piece in adapter.stream(prepared, max_new_tokens=32):
    print(piece, end="", flush=True)
print()
