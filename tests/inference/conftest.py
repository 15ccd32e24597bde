"""Put this folder on sys.path so `inference_toys` imports (also by build_network's import path).

The suite runs with --import-mode=importlib, which does not add test folders to sys.path;
the toy network must be importable by name, as a user's own network module would be.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
