"""IS-GAN training cost per stage: seconds per step and peak memory, fp32 vs bf16-mixed.

Each run is a real ``Trainer.fit`` of :class:`reidlab.modules.ISGAN` through the three
stages (one epoch of ``--steps`` batches each, the first ``--warmup`` batches of every stage
not timed) on the synthetic mall domain (4 ids x 4 images). Precisions alternate run by run
(``--repeats``), so machine noise hits both alike; the table gives medians and the
bf16 / fp32 ratio.

* ``--size cpu`` (default): the CPU benchmark's model (examples/configs/synthetic/isgan.yaml:
  ImageNet-shaped MobileNetV2, 96 x 48, G / D at 1/4 and 1/2 width); peak memory is the
  process's resident set (sampled) during the stage.
* ``--size paper``: ResNet-50 at 384 x 128 with the paper's G and D, on the GPU: images / s and
  peak GPU memory (``torch.cuda.max_memory_allocated``) per stage. Without a GPU it says so
  and exits.

    python benchmarks/isgan_speed.py --threads 2                 # CPU table -> docs
    python benchmarks/isgan_speed.py --size paper --steps 30     # on a GPU machine
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_cost import PhaseTimer, arguments, measure  # noqa: E402

from reidlab.datamodules import ReIDDataModule  # noqa: E402
from reidlab.modules import ISGAN  # noqa: E402

SIZES = {
    "cpu": dict(model=dict(backbone="mobilenet_v2", image_size=(96, 48), generator_width=0.25,
                           discriminator_width=0.5),
                data=dict(height=96, width=48)),
    "paper": dict(model=dict(backbone="resnet50", image_size=(384, 128)),
                  data=dict(height=384, width=128)),
}
SECTION = "## IS-GAN training cost"
NOTES = """The CPU size of `examples/configs/synthetic/isgan.yaml` (MobileNetV2 at 96 x 48, G at
1/4 and D at 1/2 width). Stage 2 adds E_U, G and D (trunk and E_R frozen: no backward
through them), stage 3 the backward through everything. bf16-mixed is for GPUs: on a CPU
with native bf16 (AVX-512 BF16 / AMX, as here) it runs at about fp32's speed, on one
without (the machine of the first measurement) about 10x slower; and oneDNN's bf16
convolution gave non-finite outputs for some small inputs on this CPU (tests run bf16 on
ATen's kernels, `tests/conftest.py`): on CPU, train in fp32. Peak RSS is the process's,
sampled during the stage. On a GPU machine, `python benchmarks/isgan_speed.py --size
paper` gives images / s and peak GPU memory at 384 x 128 with ResNet-50 (not measured: no
GPU was lent to this task)."""


def run(size: str, precision: str, steps: int, warmup: int, workdir: str) -> PhaseTimer:
    cuda = size == "paper"
    spec = SIZES[size]
    dm = ReIDDataModule(dataset="synthetic:mall", num_ids=4, num_instances=4, num_workers=2,
                        padding=0, erasing_p=0.0, interpolation="bicubic",
                        dataset_kwargs=dict(num_train_ids=250, num_test_ids=100,
                                            images_per_id=20),
                        **spec["data"])
    model = ISGAN(num_classes=250, weights=None, stage_epochs=(1, 1, 1), **spec["model"])
    timer = PhaseTimer(lambda module: module.stage_at(module.current_epoch), warmup, cuda)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                         max_epochs=3, limit_train_batches=steps, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], default_root_dir=workdir,
                         use_distributed_sampler=False)
    trainer.fit(model, dm)
    return timer


def main() -> None:
    args = arguments(__doc__, steps=12, what="stage").parse_args()
    measure(args, run, "stage", {1: "1", 2: "2", 3: "3"}, 16, "batch 4 ids x 4", SECTION,
            "measures images/s and GPU memory at 384 x 128 on a CUDA device", NOTES)


if __name__ == "__main__":
    main()
