"""One LightningModule per method, and a registry by name."""

from reidlab.modules.arn import ARN
from reidlab.modules.base import ReIDModule
from reidlab.modules.baseline import Baseline
from reidlab.modules.dcdfa import DCDFA
from reidlab.modules.iics import IICS
from reidlab.modules.isgan import ISGAN
from reidlab.modules.sbase import SBase

METHODS = {"baseline": Baseline, "sbase": SBase, "dcdfa": DCDFA, "iics": IICS, "arn": ARN,
           "isgan": ISGAN}

__all__ = ["ARN", "DCDFA", "IICS", "ISGAN", "METHODS", "Baseline", "ReIDModule", "SBase"]
