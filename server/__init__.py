"""What sees only updates: validation, aggregation, the ServerApp and the run record."""
