"""fraud_pipelines."""
