"""Every benchmark script runs end to end at tiny sizes, so a change that breaks one fails the suite (their numbers are
measured by running them in full, never here). Each writes its JSON to a temporary folder (``--results``)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name != "report.py")  # report: their helper


def run_benchmark(script: str, *args: str, cwd: Path = BENCHMARKS) -> str:
    """Run ``script`` with ``args``; its stdout (the test fails with the script's output if it fails)."""
    command = [sys.executable, str(BENCHMARKS / script), *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def rows(results: Path, name: str) -> list[dict]:
    data = json.loads((results / f"{name}.json").read_text())
    assert data["machine"] and data["date"]
    return data["rows"]


def test_every_benchmark_script_has_a_smoke_test_here():
    tested = {name.removeprefix("test_") for name, _ in globals().items() if name.startswith("test_")}
    covered = {script for script in SCRIPTS if any(script.removesuffix(".py") in test for test in tested)}
    assert covered == set(SCRIPTS), f"no smoke test for {sorted(set(SCRIPTS) - covered)}"


def test_client_round_measures_each_way_of_holding_the_base_in_its_own_process(tmp_path, tiny_folder):
    run_benchmark("client_round.py", "--base", "tiny", "--modes", "lora-nf4,peft-none,full-none", "--steps", "2",
                  "--batch", "2", "--seq", "24", "--repeats", "1", "--results", str(tmp_path))
    measured = {row["mode"]: row for row in rows(tmp_path, "client_round-cpu")}
    assert list(measured) == ["lora-nf4", "peft-none", "full-none"]
    assert all(row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in measured.values())
    assert measured["full-none"]["vs_full_ft"] == 1.0
    assert measured["lora-nf4"]["trainable_params"] < measured["full-none"]["trainable_params"]


def test_communication_counts_each_upload_against_flowertunes(tmp_path, tiny_folder):
    run_benchmark("communication.py", "--base", "tiny", "--results", str(tmp_path))
    counted = rows(tmp_path, "communication")
    flowertune = next(row for row in counted if row["setting"] == "flowertune full LoRA fp32")
    full_model = next(row for row in counted if row["setting"] == "full-model FedAvg fp32")
    assert flowertune["vs_flowertune"] == 1.0 and full_model["bytes_up"] > flowertune["bytes_up"]


def test_device_rounds_counts_base_loads_on_a_real_deployment(tmp_path, tiny_folder):
    run_benchmark("device_rounds.py", "--base", "tiny", "--rounds", "1", "--results", str(tmp_path))
    (row,) = rows(tmp_path, "device_rounds-this-version")
    assert row["rounds"] == 1 and row["device messages"] >= 2  # each device trained (and evaluated) once
    assert row["messages that loaded the base"] <= row["device messages"] and row["seconds per round"] > 0


def test_edge_inference_runs_torch_and_llama_cpp_on_the_same_prompts(tmp_path):
    run_benchmark("edge_inference.py", "--new-tokens", "2", "--threads", "1", "--runtimes", "torch-none,llama.cpp",
                  "--results", str(tmp_path))
    measured = rows(tmp_path, "edge_inference")
    assert [row["runtime"] for row in measured] == ["torch", "llama.cpp"]
    assert all(row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in measured)


def test_feature_replay_measures_how_stale_cached_activations_are(tmp_path, tiny_folder):
    run_benchmark("feature_replay.py", "--base", "tiny", "--steps", "2", "--results", str(tmp_path))
    layers = rows(tmp_path, "feature_replay")
    assert layers and all(row["max_relative_drift"] >= row["median_relative_drift"] >= 0 for row in layers)


def test_forgetting_cost_times_each_run_paired_by_seed_against_the_first(tmp_path, tiny_folder):
    preset = tmp_path / "tiny.toml"
    preset.write_text('[compare]\nclients = 2\nrounds = 1\n\n[config]\nbase-model = "tiny"\nquantisation = "none"\n'
                      'local-steps = 2\nmax-seq-len = 48\n\n[runs.none]\nreplay = "none"\n\n'
                      '[runs.self]\nreplay = "self"\nreplay-self-size = 2\n')
    output = run_benchmark("forgetting_cost.py", "--preset", str(preset), "--runs", "none,self", "--seeds", "1",
                           "--results", str(tmp_path))
    timed = rows(tmp_path, "forgetting_cost")
    assert [(row["run"], row["seeds"]) for row in timed] == [("none", 1), ("self", 1)]
    assert timed[0]["extra_client_time"] is None and timed[1]["extra_client_time"]["n"] == 1
    assert timed[1]["extra_recurring_time"]["mean"] < timed[1]["extra_client_time"]["mean"]  # the draw's writing apart
    assert "self seed 0:" in output and "of them first-time" in output


def test_keep_comparison_keeps_a_compare_result_and_its_plots(tmp_path):
    kept_runs = BENCHMARKS / "results" / "forgetting-tuning"
    for run in ("none", "self-wise-50"):
        shutil.copytree(kept_runs / run, tmp_path / run)
    stamen = Path(sys.executable).parent / "stamen"
    subprocess.run([str(stamen), "compare", "none", "self-wise-50", "--baseline", "none", "--out", "compared"],
                   cwd=tmp_path, check=True, capture_output=True)
    preset = BENCHMARKS.parent / "simulations" / "forgetting.toml"
    run_benchmark("keep_comparison.py", str(tmp_path / "compared"), "kept", str(preset), "--results",
                  str(tmp_path / "kept"))
    kept = json.loads((tmp_path / "kept" / "kept.json").read_text())
    assert kept["kind"] == "compare" and kept["baseline"] == "none" and kept["seeds"] == 3
    assert [row["run"] for row in kept["rows"]] == ["none", "self-wise-50"]
    assert (tmp_path / "kept" / "kept.png").is_file() and (tmp_path / "kept" / "kept-gain-vs-retention.png").is_file()


def test_lora_modes_runs_the_modes_and_tabulates_them(tmp_path, tiny_folder):
    run_benchmark("lora_modes.py", "--modes", "naive,fedsa", "--clients", "2", "--rounds", "1", "--runs",
                  str(tmp_path / "runs"),
                  *(item for setting in ("base-model=tiny", "quantisation=none", "local-steps=2", "max-seq-len=32")
                    for item in ("--set", setting)), "--results", str(tmp_path))
    modes = rows(tmp_path, "lora_modes")  # two steps: FedSA shares only A, whose first step has no gradient
    assert [row["mode"] for row in modes] == ["naive", "fedsa"]
    assert all(row["rounds"] == 1 and row["bytes_up_per_client"] > 0 for row in modes)


def test_nf4_cpu_inference_measures_both_paths(tmp_path, tiny_folder):
    run_benchmark("nf4_cpu_inference.py", "--base", "tiny", "--new-tokens", "2", "--repeats", "1",
                  "--results", str(tmp_path))
    paths = rows(tmp_path, "nf4_cpu_inference")
    assert [row["path"] for row in paths] == ["trainable (Stamen's default)", "inference-only (trainable=False)"]


def test_readme_tables_are_what_the_kept_results_render_and_a_stale_one_is_named(tmp_path):
    run_benchmark("readme_tables.py", "--check")
    readme = tmp_path / "README.md"
    original = (BENCHMARKS / "README.md").read_text()
    marker = "<!-- results:communication -->\n"
    assert marker in original
    readme.write_text(original.replace(marker, marker + "an edited line\n"))
    stale = subprocess.run([sys.executable, "readme_tables.py", "--check", "--readme", str(readme)], cwd=BENCHMARKS,
                           capture_output=True, text=True)
    assert stale.returncode == 1 and "communication" in stale.stderr and "an edited line" in readme.read_text()
    run_benchmark("readme_tables.py", "--readme", str(readme))
    assert readme.read_text() == original


def test_secagg_times_both_phases_of_stamen_and_flower_in_one_run(tmp_path):
    run_benchmark("secagg.py", "--clients", "3", "--params", "1000", "--rounds", "1", "--results", str(tmp_path))
    (row,) = rows(tmp_path, "secagg")
    for phase in ("plain_s", "plain_eval_s", "secure_s", "secure_eval_s", "roster_s", "roster_eval_s",
                  "flower_plain_s", "flower_secaggplus_s", "flower_eval_s"):
        assert row[phase] > 0, phase
    assert float(row["secure_eval_mean_error"]) < 1e-4  # the secure mean is the plain one, to fixed-point precision
    assert row["secure_upload_bytes"] > row["plain_upload_bytes"]


def test_second_base_runs_the_whole_path_on_a_packaged_base(tmp_path):
    output = run_benchmark("second_base.py", "--base", "smollm2-135m", "--clients", "2", "--rounds", "1",
                           "--local-steps", "1", "--set", "forgetting-probes=false", "--set", "max-seq-len=32",
                           "--heldout", "4", "--results", str(tmp_path))
    steps = rows(tmp_path, "second_base")
    assert len(steps) == 3 and steps[0]["step"] == "federation (global adapter)"
    assert all(row["heldout_before"] > 0 and row["heldout_after"] > 0 for row in steps)
    assert "answer: " in output


def test_secure_aggregation_sums_within_its_error_bound(tmp_path):
    run_benchmark("secure_aggregation.py", "--values", "1000", "--clients", "10", "--results", str(tmp_path))
    measured = rows(tmp_path, "secure_aggregation")
    assert [row["dropped"] for row in measured] == [0, 1]  # none, then 10% of the clients drop
    assert all(float(row["max_abs_error"]) <= float(row["error_bound"]) for row in measured)


def test_server_aggregation_times_registered_rules(tmp_path):
    run_benchmark("server_aggregation.py", "--clients", "3", "--values", "1000", "--results", str(tmp_path))
    from stamen.server.rules import RULES

    timed = rows(tmp_path, "server_aggregation")
    assert len(timed) >= 4 and {row["rule"] for row in timed} <= set(RULES)
    assert all(row["x_memcpy"] > 0 for row in timed)  # its seconds against copying the same bytes


def test_simulation_scale_measures_a_round_and_the_whole_tree_s_memory_for_each_loader(tmp_path):
    run_benchmark("simulation_scale.py", "--tiny", "2", "--per-call-tiny", "2", "--embedded", "--per-call-embedded",
                  "--results", str(tmp_path))
    measured = rows(tmp_path, "simulation_scale")
    assert [row["loader"] for row in measured] == ["shared", "per-call"]
    assert all(row["trained"] == 2 and row["peak_mb"] > 0 and row["round_s"] > 0 for row in measured)
