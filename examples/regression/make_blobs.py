"""Make ``blobs.npz``: 8×8 grey images of one Gaussian blob, with the blob's centre
(row, col) as the two regression targets.

    python examples/regression/make_blobs.py            # writes blobs.npz next to this file
    kcnn train examples/regression/blobs.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def blobs(n: int = 600, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, size, size, 1) in 0..255 and float32 targets (n, 2): the blob centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(1.5, size - 2.5, size=(n, 2))
    rows, cols = np.mgrid[0:size, 0:size]
    d2 = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
    x = (255.0 * np.exp(-d2 / 2.0))[..., None].astype("float32")
    return x, centres.astype("float32")


def main(out: Path) -> None:
    x, y = blobs()
    np.savez(out, x=x, y=y, target_names=np.array(["row", "col"]))
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("blobs.npz"))
