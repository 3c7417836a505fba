"""One LightningModule per method, and a registry by name."""

from reidlab.modules.base import ReIDModule
from reidlab.modules.baseline import Baseline

METHODS = {"baseline": Baseline}

__all__ = ["METHODS", "Baseline", "ReIDModule"]
