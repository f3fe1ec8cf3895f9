"""What every benchmark ends with: a plain-text table on stdout and results/<name>.json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in columns]
    print(" | ".join(str(c).rjust(w) for c, w in zip(columns, widths, strict=False)))
    for row in rows:
        print(" | ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=False)))


def write_results(name: str, rows: list[dict], results: Path = RESULTS, **settings: object) -> Path:
    """results/<name>.json (``results``: another folder): the rows plus the machine, the date and the settings they
    were measured with."""
    results.mkdir(exist_ok=True)
    out = results / f"{name}.json"
    out.write_text(json.dumps({"machine": platform.node(), "processor": platform.processor() or platform.machine(),
                               "date": time.strftime("%Y-%m-%d"), **settings, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return out
