"""The toolkit's own commands (score, summary, check-data, harmonize, quickstart)."""
