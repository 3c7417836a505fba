"""DG-Net++ training cost per round type: seconds per step and peak memory, fp32 vs
bf16-mixed.

Each run is a real ``Trainer.fit`` of :class:`reidlab.modules.DGNetPP` through round 0
(adversarial alignment: image and domain discriminators, teacher) and one self-training
round, one epoch of ``--steps`` batch types each (the first ``--warmup`` of each not timed),
on the synthetic pair (mall -> street) with 8 + 8 images and their positives per step; the
re-clusterings between epochs are not timed. Precisions alternate run by run
(``--repeats``), so machine noise hits both alike; the table gives medians and the
bf16 / fp32 ratio. The weights are random (ImageNet-shaped): the cost does not depend on
them.

* ``--size cpu`` (default): the CPU benchmark's model (the architecture of
  examples/configs/synthetic/dgnet.yaml: MobileNetV2 E_a, generators and discriminator at
  half width, 96 x 48 images); peak memory is the process's resident set (sampled).
* ``--size paper``: ResNet-50 at 256 x 128 with the authors' generator and discriminators on
  the GPU: images / s and peak GPU memory (``torch.cuda.max_memory_allocated``) per round
  type, the memory per GPU of a DDP run (each GPU holds the whole model and its own batch).
  Without a GPU it says so and exits.

    python benchmarks/dgnet_speed.py --threads 2                 # CPU table -> docs
    python benchmarks/dgnet_speed.py --size paper --steps 30     # on a GPU machine
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_cost import PhaseTimer, arguments, measure  # noqa: E402

from reidlab.callbacks import PseudoLabeling  # noqa: E402
from reidlab.datamodules import CrossDomainDataModule  # noqa: E402
from reidlab.modules import Baseline, DGNetPP  # noqa: E402

ARCHITECTURE = ("backbone", "structure_channels", "code_channels", "residual_blocks",
                "mlp_hidden", "decoder_channels", "discriminator_scales", "discriminator_width",
                "discriminator_blocks")
CPU_MODEL = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "configs"
                            / "synthetic" / "dgnet.yaml").read_text())["model"]["init_args"]
SIZES = {"cpu": dict(height=96, width=48,
                     model={k: v for k, v in CPU_MODEL.items() if k in ARCHITECTURE}),
         "paper": dict(height=256, width=128, model=dict(backbone="resnet50"))}
ROUNDS = {0: "round 0 (alignment)", 1: "self-training"}
SECTION = "## DG-Net++ training cost"
NOTES = """The architecture of `examples/configs/synthetic/dgnet.yaml` (MobileNetV2 E_a at 96 x 48,
structure encoder, decoder and discriminator at half the authors' width). A round-0 step
is one image-discriminator update (LSGAN + R1), one domain-discriminator update and one
update of the generators and E_a with the teacher's two passes; a self-training step has
no domain discriminator and no teacher. bf16 on CPU: see "IS-GAN training cost". The
authors report about 15 GB of GPU memory in fp32 at batch 8 (ResNet-50, 256 x 128);
`python benchmarks/dgnet_speed.py --size paper` measures images / s and the peak memory
per GPU there (not measured: no GPU was lent to this task)."""
SOURCE = dict(num_train_ids=250, num_test_ids=20, images_per_id=20)
TARGET = dict(num_train_ids=50, num_test_ids=20, images_per_id=20)  # a short clustering


def run(size: str, precision: str, steps: int, warmup: int, workdir: str) -> PhaseTimer:
    cuda = size == "paper"
    spec = SIZES[size]
    dm = CrossDomainDataModule(source="synthetic:mall", target="synthetic:street",
                               source_kwargs=SOURCE, target_kwargs=TARGET,
                               height=spec["height"], width=spec["width"],
                               batches="domain_pairs", pair_batch_size=8, num_workers=2)
    teacher = Path(workdir) / "teacher.ckpt"
    if not teacher.exists():
        base = Baseline(num_classes=SOURCE["num_train_ids"],
                        backbone=spec["model"]["backbone"],
                        weights=None)
        torch.save({"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams),
                    "pytorch-lightning_version": pl.__version__}, teacher)
    model = DGNetPP(num_classes=SOURCE["num_train_ids"], teacher=str(teacher), weights=None,
                    max_clusters=1000, round0_epochs=1, round_epochs=1, **spec["model"])
    timer = PhaseTimer(lambda module: module.round, warmup, cuda)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                         max_epochs=2, limit_train_batches=steps, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         reload_dataloaders_every_n_epochs=1, default_root_dir=workdir,
                         callbacks=[timer, PseudoLabeling(distance="reranked", eps=0.45,
                                                          min_samples=7, k1=20, k2=6)],
                         use_distributed_sampler=False)
    trainer.fit(model, dm)
    return timer


def main() -> None:
    args = arguments(__doc__, steps=10, what="round").parse_args()
    measure(args, run, "round", ROUNDS, 16, "8 + 8 images with their positives per step",
            SECTION, "measures images/s and GPU memory per GPU at 256 x 128 on a CUDA device",
            NOTES)


if __name__ == "__main__":
    main()
