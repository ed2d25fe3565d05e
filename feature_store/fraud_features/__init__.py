"""fraud_features."""
