"""Balance checks and organisation policy rules (pure decisions over facts); to come."""
