"""Stage: synthesis."""
