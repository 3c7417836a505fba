"""One section of docs/benchmarks.md, (re)written by a benchmark script; the others kept."""

from __future__ import annotations

import fcntl
import re
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
LOCK = Path(tempfile.gettempdir()) / "reidlab_benchmarks_docs.lock"


def write_section(body: str, docs: Path = DOCS) -> None:
    """Replace the section whose heading is ``body``'s first line (up to the next ``## ``
    heading) by ``body``, or append it. Under a file lock, so scripts running side by side
    do not lose each other's sections."""
    heading = body.split("\n", 1)[0]
    body = body.rstrip("\n") + "\n"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = docs.read_text() if docs.exists() else "# Benchmarks\n"
        pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=\n## |\Z)", re.S | re.M)
        text = (pattern.sub(lambda _: body, text, count=1) if pattern.search(text)
                else text.rstrip("\n") + "\n\n" + body)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(text if text.endswith("\n") else text + "\n")
