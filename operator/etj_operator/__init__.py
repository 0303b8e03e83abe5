"""EfficientTrainingJob operator."""
