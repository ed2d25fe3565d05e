"""fraud_producers."""
