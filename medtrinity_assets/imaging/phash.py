"""64-bit DCT perceptual hash, for finding the same image across sources and resolutions.

The hash keeps only the lowest spatial frequencies of a 32x32 grey thumbnail, so resizing,
recompression and small intensity changes leave it (nearly) unchanged, while a different image
flips about half of its bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIZE = 8  # 8x8 low-frequency block = 64 bits
THUMB_SIZE = 32


def phash(display: np.ndarray) -> str:
    """16 hex characters: bit i is set when DCT coefficient i of the 8x8 block exceeds the median.

    The median leaves out the DC term: it only encodes mean brightness and is far larger than
    the rest, so including it would shift the threshold with exposure.
    """
    display = np.asarray(display)
    if display.ndim == 3:
        image = Image.fromarray(np.ascontiguousarray(display[:, :, :3]).astype(np.uint8)).convert("L")
    else:
        image = Image.fromarray(display.astype(np.uint8), mode="L")
    # BOX averages every source pixel into the thumbnail: a 2048 px radiograph and its 512 px
    # copy give the same thumbnail, which is the point.
    thumb = np.asarray(image.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(thumb, type=2, norm="ortho")[:HASH_SIZE, :HASH_SIZE].reshape(-1)
    median = np.median(low[1:])
    bits = low > median
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
