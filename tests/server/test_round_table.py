"""The per-round table a finished run prints."""

from rich.console import Console

from stamen.server.round_table import summary_table


def test_a_round_that_measured_no_loss_shows_a_dash_not_nan():
    """Issue: the round table printed `nan` for rounds that did not run the probes (or skipped evaluation)."""
    rounds = [{"round": 1, "initial_heldout_loss": 3.0, "eval_heldout_loss": 2.5, "clients_accepted": 2,
               "bytes_up_per_client": 100},
              {"round": 2, "eval_heldout_loss": 2.25, "eval_general_text_loss": 4.0, "clients_accepted": 2}]
    console = Console(record=True, width=200)
    console.print(summary_table(rounds, base_bytes=10_000))
    text = console.export_text()
    assert "nan" not in text.lower()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "3.0000" in lines["0"] and "2.5000" in lines["1"] and "4.0000" in lines["2"]
    assert lines["1"].split("│")[3].strip() == "-"  # round 1 ran no general-text probe
