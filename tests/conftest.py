import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):  # share the cores among the workers: torch's
    # default (all cores in every worker) oversubscribes them, and small ops then wait
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def write_market_tree(top: Path, train_ids=6, test_ids=4, cams=3, per_cam=2, size=(32, 16),
                      seed=0) -> Path:
    """A tiny Market-1501-layout folder with real JPEGs; ids 1.. train, 101.. test."""
    rng = np.random.default_rng(seed)
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (top / sub).mkdir(parents=True, exist_ok=True)

    def save(folder, pid, cam, n):
        colour = rng.integers(0, 255, 3)
        img = (colour + rng.integers(-20, 20, (*size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(top / folder / f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg")

    for pid in range(1, train_ids + 1):
        for cam in range(1, cams + 1):
            for n in range(per_cam):
                save("bounding_box_train", pid, cam, n)
    for pid in range(101, 101 + test_ids):
        for cam in range(1, cams + 1):
            save("query", pid, cam, 0)
            for n in range(1, per_cam + 1):
                save("bounding_box_test", pid, cam, n)
    return top


@pytest.fixture
def market_root(tmp_path) -> Path:
    return write_market_tree(tmp_path / "Market-1501-v15.09.15")


@pytest.fixture
def aten_cpu_kernels():
    """Run the test with oneDNN (mkldnn) off: on some AVX-512 CPUs its bf16 convolution
    returns non-finite outputs for small inputs (seen with torch 2.14.1: a 3x3 stride-2 conv
    on a 4 x 2 map inside a training step; the same call alone is finite). bf16 tests check
    reidlab's numerics, so they use ATen's reference kernels."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield
