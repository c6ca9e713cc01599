"""`gpuledger stack`: run the whole local stack (engine, control plane, sidecar, dashboard)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Filled in by the foundation issue."""
