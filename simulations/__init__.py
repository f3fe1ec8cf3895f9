"""Many clients on one machine: the embedded corpus, the simulation engine, progress and reports."""
