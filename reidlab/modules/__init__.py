"""One LightningModule per method, and a registry by name."""

from reidlab.modules.base import ReIDModule
from reidlab.modules.baseline import Baseline
from reidlab.modules.dcdfa import DCDFA
from reidlab.modules.sbase import SBase

METHODS = {"baseline": Baseline, "sbase": SBase, "dcdfa": DCDFA}

__all__ = ["DCDFA", "METHODS", "Baseline", "ReIDModule", "SBase"]
