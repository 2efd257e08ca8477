"""Who may call: API keys, the caller's identity, per-key budgets, failed-attempt throttling."""
