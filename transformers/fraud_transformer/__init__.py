"""fraud_transformer."""
