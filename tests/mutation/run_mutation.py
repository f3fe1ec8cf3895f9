"""Mutation testing of the modules that carry Stamen's promises, with mutmut.

A test suite earns trust when changing the code it guards makes a test fail. mutmut plants one
small change (a mutant: ``+`` for ``-``, ``<`` for ``<=``, another constant, a negated
condition, ``None`` for an argument) at a time into a copy of these modules and runs the tests
that reach the changed function; a mutant a test catches is *killed*, one no test notices
*survives*. The report gives the share killed per module and lists every survivor, marking
those judged equivalent (no behaviour can tell them apart) with the reason kept in
``equivalent.toml``, and treating as equivalent a change to an error or log message that keeps
its words (wrapped in ``XX`` or in another case) and the edits in ``_NEUTRAL_EDITS``.

Usage: ``make mutation`` (about 15 minutes on 2 cores). Writes ``docs/mutation.md`` and
``docs/mutation.json`` (the scores and every survivor). Not part of ``make test``: it runs the
guarding tests once per mutant.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ROOMS = ("shared", "client", "server", "simulations")

# promise -> the modules that carry it
MODULES = {
    "wire format": ("shared/wire.py", "shared/blockwise_int8.py"),
    "delta computation": ("client/update.py", "client/error_feedback.py", "shared/lora_ranks.py"),
    "rules and accumulator": (*sorted(f"server/rules/{p.name}" for p in (ROOT / "server/rules").glob("*.py")),
                              "server/accumulator.py"),
    "update validation": ("server/admission.py", "server/weight_cap.py"),
    # the protocol's halves; its ClientApp mod and server round are covered by test_lying_server, test_secure_federation
    # and the deployment tests, whose runs per mutant would take hours here
    "secure aggregation": ("shared/fixed_point.py", "shared/shamir.py", "shared/secagg_crypto.py",
                           "shared/secagg_protocol.py", "shared/secagg_identity.py", "client/secure_aggregation.py",
                           "client/secagg_checks.py", "server/secure_aggregation.py"),
    "privacy": ("server/privacy.py", "shared/clipping.py", "shared/noise_range.py", "shared/dp_accountant.py"),
    "device trust": ("client/device/signed_app.py", "shared/run_signature.py", "client/device/release_ledger.py"),
}
# the tests that guard them; mutmut runs, for each mutant, those among them that reach its function
TESTS = (
    "tests/shared/test_wire.py", "tests/client/test_error_feedback.py", "tests/client/test_update.py",
    "tests/shared/test_lora_ranks.py", "tests/server/test_rules.py", "tests/server/test_robust_rules.py",
    "tests/server/test_admission.py", "tests/server/test_federated_round.py", "tests/server/test_secure_aggregation.py",
    "tests/server/test_privacy.py", "tests/server/test_docs_rule_example.py", "tests/server/test_hostile_clients.py",
    "tests/server/test_secure_aggregation_refusals.py",
    "tests/client/test_signed_app.py", "tests/client/test_release_ledger.py",
)
FUZZ_EXAMPLES = "12"  # hypothesis examples per fuzz test and mutant (the suite runs 100-150)
KILLED = {1, 3, 24, -24, 36, 152, 255, -9, -11}  # a failing test, a pytest error, a timeout or a crash
SURVIVED = {0, 5, 33}  # every test passed, or no test reached the mutant


def _scratch_copy() -> Path:
    """A temp folder with the rooms as the ``stamen`` package, the tests, the docs and pyproject.toml
    (with mutmut's settings)."""
    scratch = Path(tempfile.mkdtemp(prefix="stamen-mutation-"))
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", *ROOMS, "tests", "docs"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        room = name.split("/", 1)[0]
        target = scratch / ("stamen/" + name if room in ROOMS else name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    settings = {
        "source_paths": ["stamen"],
        "only_mutate": [f"stamen/{module}" for modules in MODULES.values() for module in modules],
        "pytest_add_cli_args_test_selection": [test for test in TESTS if (scratch / test).exists()],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "also_copy": ["docs"],  # tests that check the documentation read it
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    mutmut_table = "\n[tool.mutmut]\n" + "\n".join(lines) + "\n"
    (scratch / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + mutmut_table)
    return scratch


def _mutmut(scratch: Path, *args: str, stream: bool = False) -> str:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1",  # one thread: forking stays safe
           "STAMEN_FUZZ_EXAMPLES": FUZZ_EXAMPLES}
    done = subprocess.run([str(Path(sys.executable).parent / "mutmut"), *args], cwd=scratch, env=env, text=True,
                          capture_output=not stream)
    if done.returncode:
        output = f"{(done.stdout or '')[-3000:]}\n{(done.stderr or '')[-3000:]}"
        raise RuntimeError(f"mutmut {' '.join(args)} failed:\n{output}")
    return done.stdout or ""


def _changed_lines(diff: str) -> tuple[str, str]:
    """The original and the mutated line of a mutant's diff."""
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(removed), " / ".join(added)


def _message_only(original: str, mutated: str) -> bool:
    """A mutant that only rewrites the text of an error or log message, keeping its words."""
    is_message = original.startswith("raise ") or re.match(r"(log|logger|warnings)\.\w+\(", original)
    return bool(is_message) and mutated.replace("XX", "").lower() == original.lower() and mutated != original


# changes no behaviour by a rule of the language, whatever the code around them
_NEUTRAL_EDITS = {
    r",\s*strict=(True|False|None)\b": "zip's strict check, on sequences built to the same length",
    r',\s*"big"(?=\s*[,)])': 'the byte order argument: "big" is the default since Python 3.11',
}


def _judged(module: str, original: str, mutated: str) -> str | None:
    """Why a survivor is equivalent, when it was judged so (``equivalent.toml``, matched on the changed lines)."""
    if _message_only(original, mutated):
        return "changes only the wording of a message"
    for pattern, reason in _NEUTRAL_EDITS.items():
        def plain(line: str, pattern: str = pattern) -> str:
            return re.sub(r",\s*\)", ")", re.sub(pattern, "", line))
        if plain(original) == plain(mutated):
            return reason
    for entry in tomllib.loads((HERE / "equivalent.toml").read_text()).get("survivor", []):
        if (entry["module"], entry["original"], entry["mutated"]) == (module, original, mutated):
            return entry["reason"]
    return None


# run inside the scratch copy: the diff of each named mutant, in one process (``mutmut show`` takes one)
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names = json.loads(sys.stdin.read())
print(json.dumps({name: get_diff_for_mutant(name, path=path) for name, path in names.items()}))
"""


def _diffs(scratch: Path, paths_by_name: dict[str, str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", _DIFFS], cwd=scratch, input=json.dumps(paths_by_name), text=True,
                          capture_output=True, check=True)
    return json.loads(done.stdout)


def collect(scratch: Path) -> list[dict]:
    """Every mutant of every module with its outcome, and the change a survivor made."""
    mutants = []
    for group, modules in MODULES.items():
        for module in modules:
            meta = scratch / "mutants" / "stamen" / f"{module}.meta"
            codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
            for name, code in sorted(codes.items()):
                outcome = "killed" if code in KILLED else "survived" if code in SURVIVED else "other"
                mutants.append({"group": group, "module": module, "name": name, "exit_code": code, "outcome": outcome})
    survivors = [m for m in mutants if m["outcome"] == "survived"]
    diffs = _diffs(scratch, {m["name"]: f"stamen/{m['module']}" for m in survivors})
    for mutant in survivors:
        original, mutated = _changed_lines(diffs[mutant["name"]])
        mutant |= {"original": original, "mutated": mutated, "no_test": mutant["exit_code"] != 0,
                   "equivalent": _judged(mutant["module"], original, mutated)}
    return mutants


def module_scores(mutants: list[dict]) -> list[dict]:
    """Per module: mutants tried, killed, survived (not judged equivalent), equivalent, and the score."""
    scores = []
    for group, modules in MODULES.items():
        for module in modules:
            tried = [m for m in mutants if m["module"] == module and m["outcome"] != "other"]
            killed = sum(m["outcome"] == "killed" for m in tried)
            equivalent = sum(bool(m.get("equivalent")) for m in tried)
            scored = len(tried) - equivalent
            scores.append({"group": group, "module": module, "mutants": len(tried), "killed": killed,
                           "survived": scored - killed, "equivalent": equivalent,
                           "score": round(killed / scored, 4) if scored else None})
    return scores


def report(mutants: list[dict]) -> str:
    rows = []
    for score in module_scores(mutants):
        counts = " | ".join(str(score[key]) for key in ("mutants", "killed", "survived", "equivalent"))
        shown = "-" if score["score"] is None else format(score["score"], ".0%")
        rows.append(f"| {score['group']} | `{score['module']}` | {counts} | {shown} |")
    survivors = [m for m in mutants if m["outcome"] == "survived"]
    lines = [
        "# Mutation testing",
        "",
        "Generated by `make mutation` (`tests/mutation/run_mutation.py`, mutmut). Each mutant is one small",
        "change to a function of the module; *killed* means one of the tests that reach that function failed.",
        "*Score* is killed / (mutants - equivalent); the target is at least 80% per module. Equivalent",
        "survivors are listed with the reason they cannot be told apart (`tests/mutation/equivalent.toml`).",
        "",
        "| promise | module | mutants | killed | survived | equivalent | score |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Survivors",
        "",
    ]
    for mutant in sorted(survivors, key=lambda m: (m["module"], m["name"])):
        verdict = f"equivalent: {mutant['equivalent']}" if mutant["equivalent"] else "**not killed**"
        if mutant["no_test"]:
            verdict += " (no test reaches it)"
        lines.append(f"- `{mutant['name']}`: `{mutant['original']}` -> `{mutant['mutated']}`: {verdict}")
    return "\n".join(lines) + "\n"


def main() -> None:
    scratch = _scratch_copy()
    try:
        _mutmut(scratch, "run", "--max-children", str(os.cpu_count() or 1), stream=True)
        mutants = collect(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write(mutants)


def write(mutants: list[dict]) -> None:
    summary = {"modules": module_scores(mutants), "survivors": [m for m in mutants if m["outcome"] == "survived"]}
    (ROOT / "docs" / "mutation.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = report(mutants)
    (ROOT / "docs" / "mutation.md").write_text(text)
    print(text.split("## Survivors")[0])


if __name__ == "__main__":
    main()
