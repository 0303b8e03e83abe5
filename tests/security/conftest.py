"""Security tests: they reuse the chart tests' helpers (tests/chart/chart_support.py) and the chaos harness."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "chart", TESTS / "chaos"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
