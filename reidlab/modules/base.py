"""What every reidlab method module has in common: the test-time feature contract."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class ReIDModule(pl.LightningModule):
    """Base of the method modules.

    Subclasses implement :meth:`test_features` (the method's test-time feature, e.g. the
    BNNeck feature or the teacher's pooled feature). :meth:`extract_features` wraps it in
    eval mode without gradients, so it is safe to call from a notebook at any time.
    Validation, test and predict steps return ``{"features", "pids", "camids",
    "indices"}`` for the evaluation callback.
    """

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time features ``(N, D)`` of ``images``, in eval mode, without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self.test_features(images)
        finally:
            self.train(was_training)

    def _eval_step(self, batch) -> dict[str, torch.Tensor]:
        images, pids, camids, indices = batch[:4]
        return {"features": self.extract_features(images), "pids": pids, "camids": camids,
                "indices": indices}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)
