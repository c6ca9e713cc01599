"""usage domain."""
