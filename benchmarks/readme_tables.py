"""Refresh the tables in benchmarks/README.md from results/*.json.

A table lives between ``<!-- results:NAME -->`` and ``<!-- /results -->``; it is rebuilt
from ``results/NAME.json`` (its rows, one column per key, and the machine and date it
was measured on), so the README always shows the latest run of every benchmark.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stamen.simulations.comparison import table as comparison_table
from stamen.simulations.report import markdown_table

HERE = Path(__file__).parent
README = HERE / "README.md"
MARKED = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n).*?(<!-- /results -->)", re.S)
HIDDEN = {"device"}  # the same in every row: shown in the table's caption


def render(name: str) -> str:
    """A benchmark's rows as they are, or a ``stamen compare`` result (``kind: compare``) as its own table shows it:
    means over seeds with their intervals, paired differences against the baseline."""
    data = json.loads((HERE / "results" / f"{name}.json").read_text())
    rows = data["rows"]
    device = rows[0].get("device") or data.get("processor", "")
    caption = f"_{data['date']}, {data['machine']} ({device}); `results/{name}.json`_"
    if data.get("kind") == "compare":
        return f"{caption}\n\n" + comparison_table(rows, data.get("baseline"))
    columns = [c for c in rows[0] if c not in HIDDEN]
    return f"{caption}\n\n" + markdown_table([{c: _significant(row.get(c)) for c in columns} for row in rows])


def _significant(value: object) -> object:
    """Floats to 4 significant digits (timings and ratios); everything else as it is."""
    return f"{value:,.4g}" if isinstance(value, float) else value


def main() -> None:
    text = README.read_text()
    refreshed = MARKED.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(3), text)
    README.write_text(refreshed)
    print(f"refreshed {len(MARKED.findall(text))} tables in {README}")


if __name__ == "__main__":
    main()
