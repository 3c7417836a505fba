"""Export the test-time feature extractor of a trained module: TorchScript, and ONNX where
the ``onnx`` package is installed.

    python -m reidlab.export CKPT --output model.ts --height 256 --width 128
    python -m reidlab.export CKPT --output model.onnx --height 256 --width 128

The exported model maps a batch of normalised images ``(N, 3, H, W)`` (ImageNet mean /
std, as :func:`reidlab.datamodules.build_transforms` gives) to the method's test features
``(N, D)``, the same as ``module.extract_features`` (a Baseline's BNNeck feature, a
teacher's pooled feature under the target's BN statistics, ARN's e_c ...).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from reidlab.errors import InputValueError, ReIDLabError
from reidlab.modules.base import ReIDModule


class FeatureExtractor(nn.Module):
    """``images -> module.test_features(images)`` in eval mode: one tensor out, so that it
    traces and exports (a module's ``forward`` may return a dict)."""

    def __init__(self, module: ReIDModule) -> None:
        super().__init__()
        self.module = module.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.test_features(images)


def export_feature_extractor(module: ReIDModule, output: str | Path, height: int,
                             width: int) -> Path:
    """Write ``module``'s test-time feature extractor to ``output``: ``.onnx`` for ONNX (needs
    the ``onnx`` and ``onnxscript`` packages; dynamic batch size), any other suffix for
    TorchScript (traced).

    Returns:
        The path written.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(module).cpu()
    example = torch.randn(2, 3, height, width)
    # Lightning's own switch (as in LightningModule.to_torchscript): trainer-dependent
    # properties do not raise while the module is traced
    module._jit_is_scripting = True
    with torch.no_grad(), contextlib.ExitStack() as stack:
        stack.callback(setattr, module, "_jit_is_scripting", False)
        if output.suffix == ".onnx":
            missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
            if missing:
                raise InputValueError(f"ONNX export needs {' and '.join(missing)} (pip install "
                                      f"{' '.join(missing)}); a .ts / .pt output gives "
                                      "TorchScript without it")
            torch.onnx.export(extractor, (example,), str(output), input_names=["images"],
                              output_names=["features"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        else:
            torch.jit.trace(extractor, example, check_trace=False).save(str(output))
    return output


def load_module(ckpt: str | Path, method: str | None = None) -> ReIDModule:
    """The trained module of a reidlab checkpoint: its class from the checkpoint (the
    ``reidlab`` command records it), else ``method`` (``baseline``, ``sbase``, ...)."""
    from reidlab.modules import METHODS

    hparams = torch.load(ckpt, map_location="cpu", weights_only=False,  # only hparams read
                         mmap=True).get("hyper_parameters", {})
    name = str(hparams.get("_class_path", "")).rsplit(".", 1)[-1]
    classes = {cls.__name__: cls for cls in METHODS.values()}
    if method is not None:
        if method not in METHODS:
            raise InputValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        name = METHODS[method].__name__
    if name not in classes:
        raise InputValueError(f"{ckpt}: cannot tell the method of this checkpoint (class "
                              f"{name or 'not recorded'}); pass --method, one of "
                              f"{', '.join(METHODS)}")
    return classes[name].load_from_checkpoint(ckpt, map_location="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a reidlab checkpoint (reidlab fit writes last.ckpt)")
    parser.add_argument("--output", required=True, help=".onnx for ONNX, else TorchScript")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--method", default=None, help="when the checkpoint does not say")
    args = parser.parse_args()
    try:
        path = export_feature_extractor(load_module(args.ckpt, args.method), args.output,
                                        args.height, args.width)
    except ReIDLabError as err:
        raise SystemExit(f"reidlab.export: error: {err}") from None
    print(f"feature extractor written to {path}")


if __name__ == "__main__":
    main()
