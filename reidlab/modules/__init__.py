"""One LightningModule per method, and a registry by name."""

from reidlab.modules.arn import ARN
from reidlab.modules.base import ReIDModule
from reidlab.modules.baseline import Baseline
from reidlab.modules.dcdfa import DCDFA
from reidlab.modules.dgnet import DGNet
from reidlab.modules.dgnetpp import DGNetPP
from reidlab.modules.iics import IICS
from reidlab.modules.isgan import ISGAN
from reidlab.modules.sbase import SBase

METHODS = {"baseline": Baseline, "sbase": SBase, "dcdfa": DCDFA, "iics": IICS, "arn": ARN,
           "isgan": ISGAN, "dgnet": DGNet, "dgnetpp": DGNetPP}

__all__ = ["ARN", "DCDFA", "DGNet", "DGNetPP", "IICS", "ISGAN", "METHODS", "Baseline",
           "ReIDModule", "SBase"]
