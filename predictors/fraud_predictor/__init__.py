"""fraud_predictor."""
