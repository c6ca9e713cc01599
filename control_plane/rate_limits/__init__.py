"""rate_limits domain."""
