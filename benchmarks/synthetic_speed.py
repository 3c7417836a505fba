"""Throughput of the synthetic re-ID generator on one CPU core.

Measures images per second of :func:`reidlab.datasets.synthetic.generate_domain`, end to end:
identity and camera sampling, drawing, post-processing, JPEG encoding and writing files.
Thread pools are limited to one thread before numpy / torch are imported.

    python benchmarks/synthetic_speed.py [--ids 50] [--images-per-id 16] [--size 128 64]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from reidlab.datasets.synthetic import SYNTHETIC_DOMAINS, generate_domain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=50, help="train ids (and as many test ids)")
    parser.add_argument("--images-per-id", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--domains", nargs="+", default=sorted(SYNTHETIC_DOMAINS))
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where to write (default: tmpfs /dev/shm, so that the disk's "
                             "file-creation cost does not hide the generator's; pass a disk "
                             "folder to include it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):  # pin to one core
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    height, width = args.size
    total_images, total_time = 0, 0.0
    for domain in args.domains:
        best = float("inf")
        for _ in range(args.repeats):
            root = tempfile.mkdtemp(prefix="reidlab-bench-", dir=args.root)
            try:
                start = time.perf_counter()
                top = generate_domain(domain, root, num_train_ids=args.ids,
                                      num_test_ids=args.ids, images_per_id=args.images_per_id,
                                      height=height, width=width, seed=0)
                elapsed = time.perf_counter() - start
                count = sum(1 for _ in top.rglob("*.jpg"))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            best = min(best, elapsed)
        print(f"{domain:>8}: {count} images {height}x{width} in {best:.2f} s "
              f"-> {count / best:.0f} images/s (1 thread, best of {args.repeats})")
        total_images += count
        total_time += best
    print(f"{'overall':>8}: {total_images / total_time:.0f} images/s "
          f"(written to {args.root or tempfile.gettempdir()})")


if __name__ == "__main__":
    main()
