"""`gpuledger` subcommands of the control_plane."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands (filled in by its issue)."""
