"""What every benchmark ends with: a plain-text table on stdout and results/<name>.json."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in columns]
    print(" | ".join(str(c).rjust(w) for c, w in zip(columns, widths, strict=False)))
    for row in rows:
        print(" | ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=False)))


def measure_in_child(arguments: list[str]) -> dict:
    """Run this interpreter on ``arguments`` (a script measuring one cell in its own process, so its peak memory is
    its own); the JSON object its last output line prints. A failed child stops the benchmark with its error."""
    child = subprocess.run([sys.executable, *arguments], capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """``--results``: the folder <name>.json goes to; results/ unless a smoke test points it at a temporary one."""
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of <name>.json (default: results/)")


def add_settings_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``extra``: settings of the runs a benchmark starts, as ``stamen simulate
    --set`` takes them; a value without ``=`` is refused by name."""
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                        help=help)


def _setting(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def write_results(name: str, rows: list[dict], results: Path = RESULTS, **settings: object) -> Path:
    """results/<name>.json (``results``: another folder): the rows plus the machine, the date and the settings they
    were measured with."""
    results.mkdir(exist_ok=True)
    out = results / f"{name}.json"
    out.write_text(json.dumps({"machine": platform.node(), "processor": platform.processor() or platform.machine(),
                               "date": time.strftime("%Y-%m-%d"), **settings, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return out
