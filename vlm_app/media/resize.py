"""The exact resize, compiled: torchvision's bicubic antialias (float32, clamped, rounded to uint8; what
qwen-vl-utils shows the model) at about a fifth of its cost.

The reference is `F.interpolate(image.float(), mode="bicubic", antialias=True)`: PyTorch's separable kernel, the
width first, then the height, each output value a weighted sum of a band of input values. Its weights are
recomputed here with the same float32 steps (Keys' cubic with a = -0.5, widened by the scale when shrinking, then
normalised to sum to one), and the taps are summed in the same order, in float32. What can still differ is the
last bit of a sum (the compiler may fuse a multiply and an add), so a value that lands within a rounding error of
a half may round the other way: one grey level on a few pixels in ten thousand (`tests/test_resize.py` sweeps
sizes and aspect ratios).

The two passes are numba kernels: compiled once per machine (`cache=True` keeps the machine code in numba's cache
beside this file, or in NUMBA_CACHE_DIR), without the GIL, one frame per call; frames run in parallel on the
decoder's resize threads. numba is imported on the first resize, not with the package.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

CUBIC_A = np.float32(-0.5)  # Keys' cubic as PyTorch's antialiased bicubic (and Pillow) use it
CUBIC_SUPPORT = 2.0  # the filter's half-width in input pixels, widened by the scale when shrinking
ROWS_AT_ONCE = 4  # rows the horizontal pass computes together (its code is written out for four)


def resize_exact(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> uint8 (3, *size), as the float32 reference gives it (see the module's docstring)."""
    height, width = size
    channels, in_height, in_width = image.shape
    if channels != 3:
        raise ValueError(f"resize_exact takes RGB frames (3, H, W), got {tuple(image.shape)}")
    pixels = image.permute(1, 2, 0).contiguous().numpy()  # (H, W, C): as decoded frames already lie in memory
    starts, _, weights = band_weights(in_width, width)
    rows = np.empty((channels, -(-in_height // ROWS_AT_ONCE) * ROWS_AT_ONCE, width), dtype=np.float32)
    out = np.empty((channels, height, width), dtype=np.uint8)
    horizontal, vertical = _kernels()
    horizontal(pixels.reshape(in_height, -1), starts, weights, rows)
    vertical(rows, *band_weights(in_height, height), out)
    return torch.from_numpy(out)


@lru_cache(maxsize=64)
def band_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first input index, tap count, float32 weights padded with zeros to the widest band) of each output index:
    PyTorch's antialiased bicubic weights, step by step in its float32 and double arithmetic."""
    scale = np.float32(in_size) / np.float32(out_size)
    support = np.float32(CUBIC_SUPPORT * float(scale)) if scale >= 1 else np.float32(CUBIC_SUPPORT)
    taps = int(np.ceil(support)) * 2 + 1
    invscale = np.float32(1.0 / float(scale)) if scale >= 1 else np.float32(1.0)
    centers = (float(scale) * (np.arange(out_size) + 0.5)).astype(np.float32)
    starts = np.maximum(((centers - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    ends = np.minimum(((centers + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
    counts = np.clip(ends - starts, 0, taps)
    offsets = (starts[:, None] + np.arange(taps)).astype(np.float32) - centers[:, None]
    weights = _cubic(((offsets.astype(np.float64) + 0.5) * float(invscale)).astype(np.float32))
    weights[np.arange(taps) >= counts[:, None]] = 0
    totals = np.zeros(out_size, dtype=np.float32)
    for tap in range(taps):  # summed tap by tap, as the reference does
        totals += weights[:, tap]
    weights /= np.where(totals != 0, totals, np.float32(1))[:, None]
    return starts, counts, weights


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return np.where(x < 1, near, np.where(x < 2, far, 0)).astype(np.float32)


def load_kernels() -> None:
    """Import numba and load the kernels' machine code now (compiling it once per machine, into numba's cache),
    rather than on the first frame: a server or benchmark calls this at start."""
    _kernels()


def _kernels():
    """The two compiled passes (numba imported and the machine code loaded or compiled on first use)."""
    with _COMPILING:
        if not _KERNELS:
            _KERNELS.extend(_compile())
    return _KERNELS


_KERNELS: list = []
_COMPILING = threading.Lock()


def _compile():
    import numba

    # signatures given: the machine code is loaded (or compiled) here, not on the first frame
    options = {"nogil": True, "cache": True, "error_model": "numpy",
               "fastmath": {"contract"}}  # multiply-adds fused, as the reference's compiled loop does; no reordering
    three = np.uint64(3)  # unsigned indices: numba then skips its negative-index fix-up, which blocks vectorising

    @numba.njit("void(u1[:, ::1], i8[::1], f4[:, ::1], f4[:, :, ::1])", **options)
    def horizontal(pixels, starts, weights, rows):
        """rows[c, y, x] = sum over taps t of weights[x, t] * pixels[y, 3 * (starts[x] + t) + c], in tap order.
        Four rows at a time share each weight load (twelve running sums); the taps are padded with zero weights
        (adding 0 * p is exact), the rows past the last with copies of it (written to rows' padding)."""
        height, row_length = pixels.shape
        taps = weights.shape[1]
        stride = row_length + 3 * taps  # each row as float32, followed by zeros the padded taps read
        block = np.zeros((ROWS_AT_ONCE, stride), dtype=np.float32)
        lines = block.reshape(-1)
        second, third, fourth = np.uint64(stride), np.uint64(2 * stride), np.uint64(3 * stride)
        for y in range(0, height, ROWS_AT_ONCE):
            for k in range(ROWS_AT_ONCE):
                line, converted = pixels[min(y + k, height - 1)], block[k]
                for i in range(row_length):
                    converted[i] = line[i]
            red, green, blue = rows[0, y:y + ROWS_AT_ONCE], rows[1, y:y + ROWS_AT_ONCE], rows[2, y:y + ROWS_AT_ONCE]
            for x in range(weights.shape[0]):
                r = np.uint64(starts[x]) * three
                g, b = r + np.uint64(1), r + np.uint64(2)
                w = weights[x, 0]
                r0, g0, b0 = lines[r] * w, lines[g] * w, lines[b] * w
                r1, g1, b1 = lines[r + second] * w, lines[g + second] * w, lines[b + second] * w
                r2, g2, b2 = lines[r + third] * w, lines[g + third] * w, lines[b + third] * w
                r3, g3, b3 = lines[r + fourth] * w, lines[g + fourth] * w, lines[b + fourth] * w
                for tap in range(1, taps):
                    w = weights[x, tap]
                    r, g, b = r + three, g + three, b + three
                    r0, g0, b0 = r0 + lines[r] * w, g0 + lines[g] * w, b0 + lines[b] * w
                    r1, g1, b1 = r1 + lines[r + second] * w, g1 + lines[g + second] * w, b1 + lines[b + second] * w
                    r2, g2, b2 = r2 + lines[r + third] * w, g2 + lines[g + third] * w, b2 + lines[b + third] * w
                    r3, g3, b3 = r3 + lines[r + fourth] * w, g3 + lines[g + fourth] * w, b3 + lines[b + fourth] * w
                red[0, x], green[0, x], blue[0, x] = r0, g0, b0
                red[1, x], green[1, x], blue[1, x] = r1, g1, b1
                red[2, x], green[2, x], blue[2, x] = r2, g2, b2
                red[3, x], green[3, x], blue[3, x] = r3, g3, b3

    @numba.njit("void(f4[:, :, ::1], i8[::1], i8[::1], f4[:, ::1], u1[:, :, ::1])", **options)
    def vertical(rows, starts, counts, weights, out):
        """out[c, y, x] = sum over taps t of weights[y, t] * rows[c, starts[y] + t, x], in tap order, clamped to
        0..255 and rounded half to even (as torch.round); whole rows at a time, so it vectorises."""
        width = rows.shape[2]
        total = np.empty(width, dtype=np.float32)
        for c in range(rows.shape[0]):
            for y in range(out.shape[1]):
                start, weight = starts[y], weights[y]
                first = rows[c, start]
                for x in range(width):
                    total[x] = first[x] * weight[0]
                for tap in range(1, counts[y]):
                    line, w = rows[c, start + tap], weight[tap]
                    for x in range(width):
                        total[x] += line[x] * w
                line = out[c, y]
                for x in range(width):
                    line[x] = np.uint8(np.rint(min(max(total[x], np.float32(0)), np.float32(255))))

    return horizontal, vertical
