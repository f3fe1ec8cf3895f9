"""Virtual clients share one loaded base per worker process: memory does not grow with the number of clients."""

from __future__ import annotations

from pathlib import Path

from stamen.shared.config import RunConfig
from stamen.shared.tiny_model import build_tiny_base
from stamen.simulations.engine import simulate
from stamen.simulations.process_memory import PeakTreeMemory

BASE_MB = 36  # a small base whose copies would show: ~9.6M float32 parameters


def _peak_rss_of_run(tmp_path, base: Path, clients: int) -> int:
    """Peak resident memory of this process and every process it starts (Ray, its workers) during a run."""
    config = RunConfig().replace(**{
        "base-model": str(base), "quantisation": "none", "num-server-rounds": 1, "local-steps": 1,
        "fraction-evaluate": 0.0, "run-dir": str(tmp_path), "run-id": f"clients-{clients}",
    })
    with PeakTreeMemory() as peak:
        simulate(config, clients)
    return peak.bytes


def test_a_hundred_virtual_clients_take_no_more_memory_than_ten(tmp_path):
    base = build_tiny_base(tmp_path / "base", hidden_size=512, num_layers=4)
    assert sum(p.stat().st_size for p in base.glob("*.safetensors")) > BASE_MB * 2**20
    ten = _peak_rss_of_run(tmp_path, base, 10)
    hundred = _peak_rss_of_run(tmp_path, base, 100)
    # each worker process holds one base; 90 more clients may add records, not bases
    assert hundred - ten < 6 * BASE_MB * 2**20, (
        f"10 clients: {ten / 2**20:.0f} MB, 100 clients: {hundred / 2**20:.0f} MB"
    )
