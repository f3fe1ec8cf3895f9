"""A real device: joining a deployment, the worker that keeps the base loaded, the signed-app check, the
release ledger, resource limits and the one line per message a person reads."""
