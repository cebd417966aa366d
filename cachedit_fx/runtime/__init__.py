"""Cache state, decision policy and statistics; everything that changes between calls."""
