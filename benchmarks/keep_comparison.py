"""Keep a ``stamen compare PRESET`` result as benchmark evidence: ``results/NAME.json`` and its plots.

The JSON holds every compared run's row (means and 95% intervals over seeds, the paired differences against
the preset's baseline) with each seed's own row under ``per_seed`` and, where the forgetting probes ran, each
seed's retention of every known fact under ``per_fact``, the number of seeds, the preset and the machine;
``readme_tables.py`` renders it in benchmarks/README.md as ``stamen compare`` renders ``compare.md``.

    python benchmarks/keep_comparison.py runs/compare-forgetting forgetting simulations/forgetting.toml
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path

from report import RESULTS, add_results_option, write_results

PLOTS = {"compare.png": "", "gain_vs_forgetting.png": "-gain-vs-forgetting",
         "gain_vs_retention.png": "-gain-vs-retention", "cost_to_target.png": "-cost-to-target"}


def keep(compared: Path, name: str, preset: Path, results: Path = RESULTS) -> Path:
    rows = json.loads((compared / "compare.json").read_text())
    settings = tomllib.loads(preset.read_text())
    out = write_results(name, rows, results, kind="compare", preset=preset.as_posix(), settings=settings,
                        baseline=settings.get("compare", {}).get("baseline"), seeds=min(row["seeds"] for row in rows))
    for plot, suffix in PLOTS.items():
        if (compared / plot).exists():
            shutil.copy(compared / plot, results / f"{name}{suffix}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compared", type=Path, help="the folder stamen compare wrote (compare.json)")
    parser.add_argument("name", help="results/NAME.json and the <!-- results:NAME --> table")
    parser.add_argument("preset", type=Path, help="the preset that was compared")
    add_results_option(parser)
    args = parser.parse_args()
    keep(args.compared, args.name, args.preset, args.results)


if __name__ == "__main__":
    main()
