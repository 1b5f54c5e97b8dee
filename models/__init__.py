"""Pure PyTorch models of the hybrid framework: no Ray, Lance, MLflow or file paths in here."""
