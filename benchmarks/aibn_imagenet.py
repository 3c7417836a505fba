"""What AIBN / InstanceNorm in MobileNetV2's layer3 + layer4 does to ImageNet features, before
any training: mAP of the pooled features on each synthetic domain's query + gallery.

IICS converts the BatchNorms of the last two stages (paper: ResNet-50 layer3 + layer4) to
AIBN (eq. 12); its Table 2 "+ IN" row is AIBN with alpha fixed at 0. On MobileNetV2 the
last stage ends in a plain 1x1 convolution (``features[18]``, 320 -> 1280 channels, no skip)
whose BN output goes straight into the global pooling, so the script also tries keeping
that one BN (alpha 1). Writes the section "AIBN and InstanceNorm on ImageNet MobileNetV2
features" of docs/benchmarks.md.

    python benchmarks/aibn_imagenet.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

SECTION = "## AIBN and InstanceNorm on ImageNet MobileNetV2 features"
SIZE = {"num_train_ids": 250, "num_test_ids": 100, "images_per_id": 20}
VARIANTS = [  # (label, alpha or None for plain BN, keep the head's BN)
    ("BatchNorm (no AIBN)", None, False),
    ("IN (alpha 0)", 0.0, False),
    ("IN (alpha 0), head BN kept", 0.0, True),
    ("AIBN alpha 0.5", 0.5, False),
    ("AIBN alpha 0.5, head BN kept", 0.5, True),
]


def target_datamodule(domain: str):
    """The synthetic pair with ``domain`` as the target (its query + gallery are tested)."""
    from reidlab.datamodules import CrossDomainDataModule

    other = "street" if domain == "mall" else "mall"
    return CrossDomainDataModule(source=f"synthetic:{other}", train_target=False,
                                 target=f"synthetic:{domain}", source_kwargs=SIZE,
                                 target_kwargs=SIZE, height=96, width=48, num_workers=1)


def imagenet_map(dm, alpha: float | None, head_bn: bool) -> float:
    """mAP of the untrained ImageNet features, layer3 + layer4 normalised as asked."""
    import pytorch_lightning as pl

    from reidlab.callbacks import RetrievalEvaluation
    from reidlab.modules import Baseline
    from reidlab.nn.aibn import AIBN, convert_to_aibn

    model = Baseline(backbone="mobilenet_v2", weights="mobilenet_v2_imagenet", last_stride=1,
                     test_feature="pooled", num_classes=SIZE["num_train_ids"])
    if alpha is not None:
        convert_to_aibn(model.backbone, ("layer3", "layer4"), alpha_init=alpha,
                        learn_alpha=False)
        if head_bn:  # features[18], the last block of layer4, has an alpha of its own
            for module in model.backbone.layer4[-1].modules():
                if isinstance(module, AIBN):
                    module.alpha.data.fill_(1.0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[RetrievalEvaluation(metric="cosine", num_figure_queries=0)])
    metrics = trainer.test(model, dm, verbose=False)[0]
    return next(v for k, v in metrics.items() if k.endswith("mAP"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", default=["street", "mall"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-docs", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    maps = {}
    for domain in args.domains:
        dm = target_datamodule(domain)
        for label, alpha, head_bn in VARIANTS:
            maps[label, domain] = imagenet_map(dm, alpha, head_bn)
            print(f"{domain}: {label}: mAP {100 * maps[label, domain]:.1f}", flush=True)
    lines = ["| layer3 + layer4 normalisation | " + " | ".join(
        f"mAP on {d}" for d in args.domains) + " |", "|---|" + "---|" * len(args.domains)]
    lines += [f"| {label} | " + " | ".join(f"{100 * maps[label, d]:.1f}" for d in args.domains)
              + " |" for label, _, _ in VARIANTS]
    if not args.no_docs:
        write_section(f"{SECTION}\n\nProduced by `python benchmarks/aibn_imagenet.py --threads 1`"
                      " (ImageNet MobileNetV2, output stride 16, 96x48, no training; pooled "
                      "features, cosine, each domain's query + gallery; eval mode: BN parts use "
                      "the ImageNet running statistics, IN parts each image's own).\n\n"
                      + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
