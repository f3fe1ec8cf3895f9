"""What a client measures: held-out loss, the neutral forgetting probes, forgetting metrics, greedy answers."""
