"""`gpuledger` subcommands of serving/: `lint` (config guardrails) and `size` (GPU memory sizing).

Each subcommand has its own `_register_<name>(sub)`; `register` just calls them, so adding one is a
two-line change. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gpuledger.cli import CliError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    _register_lint(sub)
    _register_size(sub)


def _register_lint(sub: argparse._SubParsersAction[Any]) -> None:
    lint = sub.add_parser(
        "lint",
        help="check vLLM profiles and feature/policy YAML for unbounded GPU spend",
        description="Exit 1 with `file:line: message` findings; exit 2 if a file is missing or "
        "malformed. Directories expand to their *.yaml/*.yml files.",
    )
    lint.add_argument("paths", nargs="+", metavar="PATH")
    lint.add_argument("-q", "--quiet", action="store_true", help='no "ok" line when clean')
    lint.set_defaults(func=_lint)


def _lint(args: argparse.Namespace) -> int:
    from serving.lint import LintError, lint_paths

    try:
        checked, findings = lint_paths(args.paths)
    except LintError as exc:
        raise CliError(str(exc)) from None
    for finding in findings:
        print(finding)
    if findings:
        return 1
    if not args.quiet:
        print(f"ok: {checked} config file{'s' if checked != 1 else ''} checked")
    return 0


def _register_size(sub: argparse._SubParsersAction[Any]) -> None:
    size = sub.add_parser(
        "size",
        help="GPU memory for a model and workload: weights, KV cache, headroom, minimum TP",
        description="Exit 0 when the worst case (every sequence at max_model_len) fits, 1 when it "
        "does not, 2 on bad input. With --profile, the profile supplies every option not given.",
    )
    size.add_argument("--profile", help="take model/workload/GPU from a profile (name or path)")
    size.add_argument("--model", help="known name or HF id, a config.json, or a model directory")
    size.add_argument("--max-model-len", type=int)
    size.add_argument("--max-num-seqs", type=int)
    size.add_argument(
        "--gpu", help="H100-80GB, H200-141GB, A100-80GB, A100-40GB, L40S-48GB, L4-24GB, A10G-24GB"
    )
    size.add_argument("--quantization", choices=["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8"])
    size.add_argument("--tp", type=int, help="tensor parallel size (default 1)")
    size.add_argument("--gpu-memory-utilization", type=float, help="default 0.9")
    size.add_argument(
        "--kv-cache-dtype", choices=["auto", "fp8"], help="default auto (model dtype)"
    )
    size.add_argument("--json", action="store_true", help="machine-readable output")
    size.set_defaults(func=_size)


def _size(args: argparse.Namespace) -> int:
    from serving.models import ModelError, load_model, lookup_gpu
    from serving.profiles import ProfileError, load_profile
    from serving.sizing import SizingError, Workload, render, size

    opts: dict[str, Any] = {}
    try:
        if args.profile:
            from serving.engine import cache_dir

            profile = load_profile(args.profile)
            opts = {
                "model": profile.resolved_model(cache_dir()), "max_model_len": profile.max_model_len,
                "max_num_seqs": profile.max_num_seqs, "gpu": profile.gpu_type,
                "quantization": profile.quantization, "tp": profile.tensor_parallel_size,
                "gpu_memory_utilization": profile.gpu_memory_utilization,
                "kv_cache_dtype": profile.kv_cache_dtype,
            }  # fmt: skip
        given = {k: getattr(args, k) for k in ("model", "max_model_len", "max_num_seqs", "gpu",
                                                "quantization", "tp", "gpu_memory_utilization",
                                                "kv_cache_dtype")}  # fmt: skip
        opts.update({k: v for k, v in given.items() if v is not None})
        missing = [
            k for k in ("model", "max_model_len", "max_num_seqs", "gpu") if opts.get(k) is None
        ]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise CliError(f"size needs {flags} (or a --profile that sets them)")
        arch = load_model(opts["model"])
        gpu = lookup_gpu(opts["gpu"])
        work = Workload(
            max_model_len=opts["max_model_len"],
            max_num_seqs=opts["max_num_seqs"],
            gpu_memory_utilization=opts.get("gpu_memory_utilization") or 0.90,
            quantization=opts.get("quantization"),
            kv_cache_dtype=opts.get("kv_cache_dtype") or "auto",
        )
        result = size(arch, gpu, work, tp=opts.get("tp") or 1)
    except (ModelError, ProfileError, SizingError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result, arch, work))
    return 0 if result.fits else 1
