"""Exported feature extractors give the module's test features; flip-averaged evaluation."""

import importlib.util

import pytest
import pytorch_lightning as pl
import torch

from reidlab.callbacks import RetrievalEvaluation
from reidlab.errors import InputValueError
from reidlab.export import export_feature_extractor, load_module
from reidlab.modules import IICS, Baseline, SBase

NET = {"backbone": "resnet18", "backbone_width": 0.25, "weights": None}


def test_torchscript_export_matches_extract_features(tmp_path):
    torch.manual_seed(0)
    baseline = Baseline(num_classes=5, **NET)
    sbase = SBase(num_classes=5, memory_bank=False, **NET)
    with torch.no_grad():  # target BN statistics that differ from the source's
        for m in sbase.teacher.modules():
            if hasattr(m, "running_mean") and m.running_mean.ndim == 2:
                m.running_mean[1].normal_()
    images = torch.randn(3, 3, 32, 16)  # another batch size than the trace's
    for model in (baseline, sbase):
        path = export_feature_extractor(model, tmp_path / f"{type(model).__name__}.ts", 32, 16)
        exported = torch.jit.load(str(path))
        torch.testing.assert_close(exported(images), model.extract_features(images))


def test_torchscript_export_of_aibn_layers(tmp_path):
    """IICS's AIBN layers trace (their instance statistics as plain tensor operations when
    no gradient is needed) and give the module's features at another batch size."""
    torch.manual_seed(0)
    model = IICS(**NET)
    path = export_feature_extractor(model, tmp_path / "iics.ts", 32, 16)
    images = torch.randn(3, 3, 32, 16)
    torch.testing.assert_close(torch.jit.load(str(path))(images), model.extract_features(images))


def test_export_from_a_checkpoint_and_clear_errors(tmp_path):
    model = Baseline(num_classes=5, **NET)
    ckpt = tmp_path / "plain.ckpt"
    # as a plain Trainer saves it: hyperparameters, but no class recorded
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    with pytest.raises(InputValueError, match="pass --method"):
        load_module(ckpt)
    loaded = load_module(ckpt, "baseline")
    images = torch.randn(2, 3, 32, 16)
    torch.testing.assert_close(loaded.extract_features(images), model.extract_features(images))
    if importlib.util.find_spec("onnx") is None:
        with pytest.raises(InputValueError, match="pip install onnx"):
            export_feature_extractor(model, tmp_path / "model.onnx", 32, 16)


def test_onnx_export_matches_extract_features(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = Baseline(num_classes=5, **NET)
    path = export_feature_extractor(model, tmp_path / "model.onnx", 32, 16)
    images = torch.randn(3, 3, 32, 16)  # another batch size than the export's
    features = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(features), model.extract_features(images),
                               rtol=1e-4, atol=1e-5)


def test_flip_averaged_evaluation_features():
    model = Baseline(num_classes=5, **NET)
    images = torch.randn(4, 3, 32, 16)
    batch = (images, torch.zeros(4), torch.zeros(4), torch.arange(4))
    plain = model.validation_step(batch, 0)["features"]
    RetrievalEvaluation(flip=True)._start(model)
    flipped = model.validation_step(batch, 0)["features"]
    expected = (model.extract_features(images) + model.extract_features(images.flip(-1))) / 2
    torch.testing.assert_close(flipped, expected)
    assert not torch.allclose(flipped, plain)
    RetrievalEvaluation()._start(model)
    torch.testing.assert_close(model.validation_step(batch, 0)["features"], plain)
