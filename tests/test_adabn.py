"""AdaBN: BatchNorm statistics re-estimated on the target, against hand computations."""

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from reidlab.callbacks import AdaBN, RetrievalEvaluation
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import Baseline
from reidlab.nn import reestimate_bn_statistics

TINY = {"num_train_ids": 6, "num_test_ids": 4, "images_per_id": 4, "height": 32, "width": 16}


def test_reestimate_is_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3))
    net[1].running_mean.fill_(5.0)
    weight = net[1].weight.clone()
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(3)]
    net.eval()
    assert reestimate_bn_statistics(net, batches) == 24
    outs = [net[0](b) for b in batches]
    mean = torch.stack([o.mean(0) for o in outs]).mean(0)
    var = torch.stack([o.var(0, unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean.detach())
    torch.testing.assert_close(net[1].running_var, var.detach())
    assert not net.training and net[1].momentum == 0.3
    torch.testing.assert_close(net[1].weight, weight)  # affine untouched


def test_adabn_callback_gives_the_target_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))
    dm = CrossDomainDataModule("synthetic:mall", "synthetic:street", source_kwargs=TINY,
                               target_kwargs=TINY, height=32, width=16, num_workers=0,
                               eval_batch_size=1000, train_target=False)
    dm.setup("validate")
    model = Baseline(num_classes=dm.num_classes, backbone="resnet18", backbone_width=0.25,
                     weights=None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[AdaBN(), RetrievalEvaluation(
                             num_figure_queries=0)])
    trainer.validate(model, datamodule=dm)
    images = torch.stack([dm.test_transform(Image.open(r.path).convert("RGB"))
                          for r in dm.target_data.train])  # one batch: exact statistics
    with torch.no_grad():
        conv = model.backbone.stem[0](images)
    bn = model.backbone.stem[1]
    torch.testing.assert_close(bn.running_mean, conv.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, conv.transpose(0, 1).flatten(1).var(1),
                               atol=1e-5, rtol=1e-4)
