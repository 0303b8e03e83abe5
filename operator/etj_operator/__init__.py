"""EfficientTrainingJob operator."""

#: The release version: the one source of it. pyproject.toml reads it (a dynamic version), ``etj --version``
#: prints it, and the chart's version and appVersion (so its default image tags) must equal it (a test checks).
__version__ = "0.1.0"
