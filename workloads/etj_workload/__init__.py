"""EfficientTrainingJob training harness."""
