"""Benchmarks, one module per measured claim: run each as `python -m benchmarks.NAME` from the repo root."""
