"""Make the test helpers (rpmkit, bootkit) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

