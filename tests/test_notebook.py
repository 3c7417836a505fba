"""The notebook users open first runs top to bottom (at toy size), so it never rots."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_shows_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_NOTEBOOK_TOY", "1")
    monkeypatch.setenv("REIDLAB_NOTEBOOK_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "direct transfer" in text and "mAP" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the ranked list and the pseudo-label quality plot
