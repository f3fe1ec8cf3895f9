"""Refresh the tables in benchmarks/README.md from results/*.json.

A table lives between ``<!-- results:NAME -->`` and ``<!-- /results -->``; it is rebuilt
from ``results/NAME.json`` (its rows, one column per key, and the machine and date it
was measured on), so the README always shows the latest run of every benchmark. ``--check`` writes nothing and
fails naming each table that is not what its JSON renders (the suite runs it, so a result kept without its table
refreshed fails CI).

    python benchmarks/readme_tables.py [--check] [--readme PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
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


def refreshed(text: str) -> str:
    """``text`` with every table rebuilt from its results JSON."""
    return MARKED.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(3), text)


def stale_tables(text: str) -> list[str]:
    """The names of the tables in ``text`` that differ from what their results JSON renders."""
    return [m.group("name") for m in MARKED.finditer(text) if m.group(0) != refreshed(m.group(0))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale table")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    text = args.readme.read_text()
    if args.check:
        stale = stale_tables(text)
        if stale:
            sys.exit(f"{args.readme}: tables not refreshed from results/<name>.json: {', '.join(stale)} "
                     "(run benchmarks/readme_tables.py)")
        print(f"all {len(MARKED.findall(text))} tables in {args.readme} are what their results render")
        return
    args.readme.write_text(refreshed(text))
    print(f"refreshed {len(MARKED.findall(text))} tables in {args.readme}")


if __name__ == "__main__":
    main()
