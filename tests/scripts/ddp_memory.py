"""MemoryBank.update on 2 CPU processes (gloo) with different, uneven per-rank batches.

Usage: python ddp_memory.py OUT_DIR
Each rank saves OUT_DIR/rank{r}.pt: its inputs, the initial and the final memory state, so
the test can compare the ranks with each other and with a single-process update.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reidlab.nn import MemoryBank

DIM, CLASSES, TARGETS = 4, 3, 6


def rank_inputs(rank: int) -> dict[str, torch.Tensor]:
    """Per-rank batches of different sizes; target index 2 and class 1 occur on both ranks."""
    gen = torch.Generator().manual_seed(100 + rank)
    n_src, n_tgt = (4, 3) if rank == 0 else (2, 5)
    return {
        "source_features": torch.randn(n_src, DIM, generator=gen),
        "source_labels": torch.tensor([0, 1, 1, 0] if rank == 0 else [1, 2]),
        "target_features": torch.randn(n_tgt, DIM, generator=gen),
        "target_indices": torch.tensor([2, 0, 2] if rank == 0 else [5, 2, 3, 3, 1]),
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same initial memory on both ranks
    bank = MemoryBank(DIM, CLASSES, TARGETS)
    bank.init_source(torch.randn(6, DIM), torch.tensor([0, 1, 2, 0, 1, 2]))
    bank.init_target(torch.randn(TARGETS, DIM))
    initial = {k: v.clone() for k, v in bank.state_dict().items()}
    inputs = rank_inputs(rank)
    bank.update(**inputs)
    # a second step with the source left out on every rank
    bank.update(None, None, inputs["target_features"] * 2, inputs["target_indices"])
    torch.save({"inputs": inputs, "initial": initial, "final": bank.state_dict()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(worker, args=(free_port, sys.argv[1]), nprocs=2)
