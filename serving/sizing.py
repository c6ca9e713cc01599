"""GPU memory sizing for a vLLM workload: weights + KV cache + runtime headroom, per GPU.

vLLM takes `gpu_memory_utilization x total memory` per GPU, loads the weights, sets aside what its
profiling run needs (activations, CUDA graphs, CUDA context), and turns the rest into the KV-cache
pool. A workload "fits" when the pool can hold every sequence at full length at once
(max_model_len x max_num_seqs): beyond that vLLM still runs, but queues or preempts requests, so
latency rather than memory is what breaks. vLLM refuses to start when the pool cannot hold even one
full-length sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from serving.models import Gpu, ModelArch, ModelError

GIB = 1024**3

# Per-GPU memory vLLM needs beyond weights and KV cache: peak activations of the profiling forward
# pass, CUDA graphs, the CUDA context and NCCL buffers. Seen on an H100 (vLLM 0.26, 8B-shaped Llama
# with a small vocabulary, 4096 ctx, 0.85 utilisation): 67.30 GiB budget - 13.00 GiB weights -
# 53.09 GiB KV pool (434,976 tokens) = 1.21 GiB. Rounded up to 2 GiB for larger vocabularies (the
# sampler's logits) and TP's NCCL buffers; with TP, activations shard like the weights. An
# estimate, not a guarantee: docs/serving.md says how to check it against vLLM's start-up log.
RUNTIME_OVERHEAD_GIB = 2.0

# Bytes per linear-layer weight. 4-bit AWQ/GPTQ also store, per group of 128 weights, a 16-bit scale
# and a 4-bit zero point (2.5 B / 128). FP8 adds one scale per tensor (negligible). Embeddings, LM
# head and norms stay 16-bit in all these formats.
_LINEAR_BYTES = {
    None: 2.0,
    "fp8": 1.0,
    "awq": 0.5 + 2.5 / 128,
    "awq_marlin": 0.5 + 2.5 / 128,
    "gptq": 0.5 + 2.5 / 128,
    "gptq_marlin": 0.5 + 2.5 / 128,
}
_KV_BYTES = {"auto": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
TP_CANDIDATES = (1, 2, 4, 8)


class SizingError(ValueError):
    """Inputs that cannot be sized (bad TP, unsupported quantization): one line."""


@dataclass(frozen=True)
class Workload:
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float = 0.90
    quantization: str | None = None
    kv_cache_dtype: str = "auto"


@dataclass(frozen=True)
class SizingResult:
    model: str
    params: int
    quantization: str | None
    gpu: str
    gpu_memory_gib: float
    tp: int
    gpu_memory_utilization: float
    budget_gib: float
    weights_gib: float
    kv_bytes_per_token: float
    kv_workload_gib: float
    runtime_overhead_gib: float
    kv_pool_gib: float
    kv_pool_tokens: int
    full_length_seqs: int
    starts: bool
    fits: bool
    min_tp: int | None
    warnings: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def weight_bytes(arch: ModelArch, quantization: str | None) -> float:
    """Total bytes of weights across all GPUs."""
    if quantization not in _LINEAR_BYTES:
        known = ", ".join(q for q in _LINEAR_BYTES if q)
        raise SizingError(f"unsupported quantization {quantization!r} (known: {known})")
    linear = arch.linear_params() * _LINEAR_BYTES[quantization]
    return linear + 2.0 * (arch.embedding_params() + arch.other_params())


def _kv_dtype_bytes(kv_cache_dtype: str) -> float:
    if kv_cache_dtype not in _KV_BYTES:
        raise SizingError(f"unsupported kv cache dtype {kv_cache_dtype!r} (known: auto, fp8)")
    return _KV_BYTES[kv_cache_dtype]


def _check_tp(arch: ModelArch, tp: int) -> None:
    # vLLM splits attention heads evenly across TP ranks and refuses other sizes.
    if tp < 1 or arch.num_heads % tp:
        raise SizingError(
            f"tensor parallel size {tp} must divide the {arch.num_heads} attention heads"
        )


@dataclass(frozen=True)
class _PerGpu:
    budget: float
    weights: float
    kv_per_token: float
    kv_workload: float
    pool: float


def _per_gpu(arch: ModelArch, gpu: Gpu, work: Workload, quant: str | None, tp: int) -> _PerGpu:
    budget = gpu.memory_gib * GIB * work.gpu_memory_utilization
    weights = weight_bytes(arch, quant) / tp
    kv_per_token = arch.kv_bytes_per_token(_kv_dtype_bytes(work.kv_cache_dtype), tp)
    kv_workload = kv_per_token * work.max_model_len * work.max_num_seqs
    pool = max(0.0, budget - weights - RUNTIME_OVERHEAD_GIB * GIB)
    return _PerGpu(budget, weights, kv_per_token, kv_workload, pool)


def minimum_tp(arch: ModelArch, gpu: Gpu, work: Workload, quant: str | None) -> int | None:
    """Smallest TP size (of 1, 2, 4, 8 that divide the heads) whose KV pool holds the worst case."""
    for tp in TP_CANDIDATES:
        if arch.num_heads % tp:
            continue
        per = _per_gpu(arch, gpu, work, quant, tp)
        if per.kv_workload <= per.pool:
            return tp
    return None


def size(arch: ModelArch, gpu: Gpu, work: Workload, tp: int = 1) -> SizingResult:
    if work.max_model_len <= 0 or work.max_num_seqs <= 0:
        raise SizingError("max_model_len and max_num_seqs must be positive")
    if not 0 < work.gpu_memory_utilization <= 1:
        raise SizingError("gpu_memory_utilization must be in (0, 1]")
    _check_tp(arch, tp)
    quant = work.quantization if work.quantization is not None else arch.quantization
    per = _per_gpu(arch, gpu, work, quant, tp)
    pool_tokens = int(per.pool // per.kv_per_token)
    warnings = []
    if work.max_model_len > arch.max_position_embeddings:
        warnings.append(
            f"max_model_len {work.max_model_len} exceeds the model's "
            f"max_position_embeddings {arch.max_position_embeddings}: vLLM will refuse it"
        )
    if (
        work.quantization
        and arch.quantization
        and work.quantization.split("_")[0] != arch.quantization
    ):
        warnings.append(
            f"checkpoint looks {arch.quantization}-quantized, sized as {work.quantization}"
        )
    return SizingResult(
        model=arch.name,
        params=arch.param_count(),
        quantization=quant,
        gpu=gpu.name,
        gpu_memory_gib=gpu.memory_gib,
        tp=tp,
        gpu_memory_utilization=work.gpu_memory_utilization,
        budget_gib=per.budget / GIB,
        weights_gib=per.weights / GIB,
        kv_bytes_per_token=per.kv_per_token,
        kv_workload_gib=per.kv_workload / GIB,
        runtime_overhead_gib=RUNTIME_OVERHEAD_GIB,
        kv_pool_gib=per.pool / GIB,
        kv_pool_tokens=pool_tokens,
        full_length_seqs=pool_tokens // work.max_model_len,
        starts=pool_tokens >= work.max_model_len,
        fits=per.kv_workload <= per.pool,
        min_tp=minimum_tp(arch, gpu, work, quant),
        warnings=warnings,
    )


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def render(result: SizingResult, arch: ModelArch, work: Workload) -> str:
    """Human-readable report; every figure is per GPU."""
    r = result
    fmt = r.quantization or "16-bit"
    kv_b = _kv_dtype_bytes(work.kv_cache_dtype)
    heads = max(1, arch.num_kv_heads // r.tp)
    need = r.weights_gib + r.runtime_overhead_gib + r.kv_workload_gib
    lines = [
        f"model             {r.model}: {_params(r.params)} params, {fmt} weights",
        f"gpu               {r.gpu} x{r.tp} (TP {r.tp}): {r.gpu_memory_gib:.2f} GiB each, "
        f"budget {r.budget_gib:.2f} GiB at {r.gpu_memory_utilization:.2f}",
        f"weights           {r.weights_gib:.2f} GiB per GPU",
        f"kv per token      {r.kv_bytes_per_token / 1024:.1f} KiB per GPU "
        f"(2 x {arch.num_layers} layers x {heads} kv heads x {arch.head_dim} head_dim x {kv_b:g} B)",
        f"kv for workload   {r.kv_workload_gib:.2f} GiB per GPU worst case "
        f"({work.max_model_len} tokens x {work.max_num_seqs} seqs)",
        f"runtime headroom  {r.runtime_overhead_gib:.2f} GiB per GPU (activations, CUDA graphs, context)",
        f"kv pool           {r.kv_pool_gib:.2f} GiB = {r.kv_pool_tokens:,} tokens "
        f"= {r.full_length_seqs} full-length sequences",
    ]
    if r.fits:
        lines.append(f"fits              yes: {need:.2f} GiB of {r.budget_gib:.2f} GiB")
    elif r.starts:
        lines.append(
            f"fits              no: worst case needs {need:.2f} GiB > {r.budget_gib:.2f} GiB; vLLM "
            f"starts but queues/preempts beyond {r.full_length_seqs} full-length sequences"
        )
    else:
        lines.append(
            "fits              no: vLLM will not start (no room for one full-length sequence)"
        )
    lines.append(f"minimum tp        {r.min_tp if r.min_tp else 'none up to 8 GPUs'}")
    lines += [f"warning           {w}" for w in r.warnings]
    return "\n".join(lines)


__all__ = ["ModelError", "SizingError", "SizingResult", "Workload", "render", "size"]
