"""engines domain."""
