"""budgets domain."""
