"""One LightningModule per method, and a registry by name."""

from reidlab.modules.arn import ARN
from reidlab.modules.base import ReIDModule
from reidlab.modules.baseline import Baseline
from reidlab.modules.dcdfa import DCDFA
from reidlab.modules.sbase import SBase

METHODS = {"baseline": Baseline, "sbase": SBase, "dcdfa": DCDFA, "arn": ARN}

__all__ = ["ARN", "DCDFA", "METHODS", "Baseline", "ReIDModule", "SBase"]
