"""Known model architectures and GPUs, and reading a Hugging Face `config.json`.

The numbers are the models' published `config.json` values, so sizing and linting work without
network access to the hub. Any other decoder-only transformer can be sized from its own
`config.json` (a file or a model directory).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class ModelError(ValueError):
    """Unknown model, unreadable or incomplete config: one line, fit for a CLI error."""


@dataclass(frozen=True)
class ModelArch:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has biases on q/k/v
    quantization: str | None = None  # from the checkpoint's quantization_config, if any

    def embedding_params(self) -> int:
        """Input embeddings plus the LM head unless it is tied to them."""
        per_table = self.vocab_size * self.hidden_size
        return per_table if self.tie_word_embeddings else 2 * per_table

    def linear_params(self) -> int:
        """Parameters of the per-layer linear projections: the part that weight quantization shrinks."""
        q_dim = self.num_heads * self.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_dim + 2 * kv_dim) + q_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size  # gate, up, down
        return self.num_layers * (attention + mlp)

    def other_params(self) -> int:
        """Norm weights (2 per layer + final) and attention biases: small, always 16-bit."""
        norms = (2 * self.num_layers + 1) * self.hidden_size
        bias = self.num_layers * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        return norms + (bias if self.attention_bias else 0)

    def param_count(self) -> int:
        return self.embedding_params() + self.linear_params() + self.other_params()

    def kv_bytes_per_token(self, kv_dtype_bytes: float, tp: int = 1) -> float:
        """K and V for every layer, on one GPU. vLLM shards KV heads across TP ranks, and
        replicates them when there are fewer KV heads than ranks (so never below one head)."""
        heads_per_gpu = max(1, self.num_kv_heads // tp)
        return 2 * self.num_layers * heads_per_gpu * self.head_dim * kv_dtype_bytes


def _llama(name: str, layers: int, hidden: int, heads: int, inter: int, **kw: Any) -> ModelArch:
    defaults: dict[str, Any] = {
        "num_kv_heads": 8, "head_dim": hidden // heads, "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }  # fmt: skip
    return ModelArch(name, layers, hidden, heads, intermediate_size=inter, **{**defaults, **kw})


# Published config.json values (Instruct variants; base models share the architecture). Qwen2.5's
# configs say 32768 positions: 128K needs YaRN rope scaling turned on, which changes the config.
KNOWN_MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in (
        _llama("llama-3.1-8b", 32, 4096, 32, 14336),
        _llama("llama-3.1-70b", 80, 8192, 64, 28672),
        _llama("qwen2.5-7b", 28, 3584, 28, 18944, num_kv_heads=4, vocab_size=152064,
               max_position_embeddings=32768, attention_bias=True),
        _llama("qwen2.5-14b", 48, 5120, 40, 13824, vocab_size=152064,
               max_position_embeddings=32768, attention_bias=True),
        _llama("qwen2.5-72b", 80, 8192, 64, 29568, vocab_size=152064,
               max_position_embeddings=32768, attention_bias=True),
        _llama("mistral-7b", 32, 4096, 32, 14336, vocab_size=32768,
               max_position_embeddings=32768),  # v0.3; v0.1/v0.2 have vocab 32000
    )
}  # fmt: skip

# Suffixes that name a variant or a quantized re-upload of the same architecture.
_VARIANT_RE = re.compile(r"-(instruct|chat|base|hf|v0\.\d|awq|gptq|int4|int8|fp8|w4a16|marlin)\b")
_QUANT_HINTS = (("awq", "awq"), ("gptq", "gptq"), ("fp8", "fp8"))


def _normalise(model_id: str) -> str:
    base = model_id.strip().lower().rsplit("/", 1)[-1]
    base = base.removeprefix("meta-")  # Meta-Llama-3.1-8B-Instruct
    return _VARIANT_RE.sub("", base)


def quantization_hint(model_id: str) -> str | None:
    """The weight format a model id advertises (`...-AWQ-INT4` -> awq), if any."""
    lowered = model_id.lower()
    return next((q for hint, q in _QUANT_HINTS if hint in lowered), None)


def lookup_known(model_id: str) -> ModelArch | None:
    """A known architecture for a short name or HF id (`meta-llama/Llama-3.1-8B-Instruct`,
    `hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4`, `llama-3.1-8b`)."""
    arch = KNOWN_MODELS.get(_normalise(model_id))
    if arch is None:
        return None
    return replace(arch, quantization=quantization_hint(model_id))


def _require_int(config: dict[str, Any], key: str, source: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"{source}: config.json needs a positive integer {key!r}")
    return value


def arch_from_config(config: Any, source: str) -> ModelArch:
    """A ModelArch from a parsed Hugging Face config.json (decoder-only, Llama-like layout)."""
    if not isinstance(config, dict):
        raise ModelError(f"{source}: config.json must be a JSON object")
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM inside
        config = {
            **config["text_config"],
            **{k: v for k, v in config.items() if k == "quantization_config"},
        }
    hidden = _require_int(config, "hidden_size", source)
    heads = _require_int(config, "num_attention_heads", source)
    kv_heads = (
        config.get("num_key_value_heads") or heads
    )  # absent means classic multi-head attention
    head_dim = config.get("head_dim") or hidden // heads
    quant = config.get("quantization_config")
    return ModelArch(
        name=source,
        num_layers=_require_int(config, "num_hidden_layers", source),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=_require_int(config, "intermediate_size", source),
        vocab_size=_require_int(config, "vocab_size", source),
        max_position_embeddings=_require_int(config, "max_position_embeddings", source),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        quantization=str(quant.get("quant_method")) if isinstance(quant, dict) else None,
    )


def read_config_file(path: Path) -> ModelArch:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    return arch_from_config(config, str(path))


def local_config_path(model: str) -> Path | None:
    """The config.json for a model given as a file or a directory path, if it exists."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    return path if path.is_file() else None


def load_model(model: str) -> ModelArch:
    """A known name/HF id, a config.json file, or a model directory holding one."""
    looks_like_path = model.endswith(".json") or model.startswith((".", "/", "~"))
    config_path = local_config_path(str(Path(model).expanduser()))
    if config_path is not None:
        return read_config_file(config_path)
    if looks_like_path:
        raise ModelError(f"model config not found: {model}")
    arch = lookup_known(model)
    if arch is None:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelError(
            f"unknown model {model!r}: give a path to its config.json (known: {known})"
        )
    return arch


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # total as CUDA reports it: what --gpu-memory-utilization is a fraction of


# H100: measured on the lent H100 (torch.cuda.mem_get_info total 85,017,493,504 B; nvidia-smi says
# 81559 MiB). Others: the "total capacity" PyTorch reports on those cards (out-of-memory messages).
KNOWN_GPUS: dict[str, Gpu] = {
    g.name.lower(): g
    for g in (
        Gpu("H100-80GB", 79.18),
        Gpu("H200-141GB", 139.8),
        Gpu("A100-80GB", 79.15),
        Gpu("A100-40GB", 39.39),
        Gpu("L40S-48GB", 44.5),
        Gpu("L4-24GB", 22.05),
        Gpu("A10G-24GB", 22.2),
    )
}


def lookup_gpu(name: str) -> Gpu:
    gpu = KNOWN_GPUS.get(name.strip().lower())
    if gpu is None:
        known = ", ".join(g.name for g in KNOWN_GPUS.values())
        raise ModelError(f"unknown GPU {name!r} (known: {known})")
    return gpu
