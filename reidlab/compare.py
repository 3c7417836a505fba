"""Final metrics of several runs side by side (e.g. direct transfer vs adapted).

    python -m reidlab.compare runs/quickstart-baseline-mall-to-street \\
        runs/quickstart-sbase-mall-to-street --names "direct transfer" SBase

Each argument is a run folder (``<save_dir>/<run name>``, where ``reidlab fit`` / ``test``
writes ``metrics.json``) or a ``metrics.json`` file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reidlab.errors import MissingFileError

METRICS_FILE = "metrics.json"


def read_metrics(run: str | Path) -> dict[str, float]:
    """The final metrics a run wrote (``<run>/metrics.json``), as fractions."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no metrics of a finished run (reidlab fit / test "
                               "writes it when the run evaluates)")
    return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, float)}


def comparison_table(runs: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric (in %), one column per run."""
    keys = sorted({k for metrics in runs.values() for k in metrics})
    width = max(map(len, keys), default=6)
    cols = [max(len(name), 8) for name in runs]
    lines = [" " * width + "".join(f"  {name:>{c}}" for name, c in zip(runs, cols, strict=True))]
    for key in keys:
        cells = [f"{100 * m[key]:.1f} %" if key in m else "-" for m in runs.values()]
        row = "".join(f"  {v:>{c}}" for v, c in zip(cells, cols, strict=True))
        lines.append(f"{key:<{width}}{row}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reidlab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or metrics.json files")
    parser.add_argument("--names", nargs="+", help="column names (default: folder names)")
    ns = parser.parse_args(args)
    names = ns.names or [Path(r).name if Path(r).is_dir() else Path(r).parent.name
                         for r in ns.runs]
    if len(names) != len(ns.runs):
        parser.error(f"{len(ns.runs)} runs but {len(names)} names")
    try:
        runs = {name: read_metrics(run) for name, run in zip(names, ns.runs, strict=True)}
    except MissingFileError as err:
        raise SystemExit(f"reidlab.compare: error: {err}") from None
    print(comparison_table(runs))


if __name__ == "__main__":
    main()
