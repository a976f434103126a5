"""What every benchmark does last: write its JSON report and say where."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: Path) -> None:
    """``report`` as indented JSON at ``path`` (folders created), and a line saying so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
