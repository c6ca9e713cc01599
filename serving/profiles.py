"""vLLM workload profiles: one YAML file per (model, hardware, workload) that says how to launch
`vllm serve`, so the launch flags live in review-able files rather than in shell history.

A profile is looked up by name in `serving/profiles/<name>.yaml` (shipped as package data) or read
from a path. The engine launcher (serving/engine.py) turns it into a `vllm serve` argument list with
`Profile.vllm_args`; `gpuledger lint` checks the same files for unsafe settings.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILES_DIR = Path(__file__).parent / "profiles"
LOCAL_TINY = "local:tiny"


class ProfileError(ValueError):
    """A profile that cannot be loaded; the message is one line, fit for a CLI error."""


class Profile(BaseModel):
    # extra="forbid": a misspelt key (say `max_model_length`) must fail loudly, not be ignored and
    # leave vLLM on its default — which for max_model_len is the model's full context.
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1, description='HF id, a local path, or "local:tiny"')
    served_model_name: str | None = None
    max_model_len: int = Field(gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enable_prefix_caching: bool | None = None
    # The *_marlin names are vLLM's fast kernels for the same checkpoints: naming plain "awq" or
    # "gptq" explicitly forces vLLM's slower original kernel even on GPUs that could run Marlin.
    quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8"] | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    gpu_type: str = "cpu"
    device: Literal["cuda", "cpu"] = "cuda"
    justification: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    enable_per_request_metrics: bool = True
    prefill_cost_factor: float | None = Field(default=None, gt=0)
    hourly_rate_usd: float | None = Field(default=None, ge=0)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def resolved_model(self, cache_dir: Path) -> str:
        """The model argument for vLLM: `local:tiny` is the model that serving.tinymodel builds."""
        if self.model == LOCAL_TINY:
            return str(cache_dir / "models" / "tiny")
        return self.model

    def vllm_args(self, model: str, host: str, port: int) -> list[str]:
        """Arguments for `vllm serve` after the word `serve`; only flags the profile sets, so
        vLLM's own defaults apply to the rest."""
        args = [model, "--host", host, "--port", str(port)]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        args += ["--max-model-len", str(self.max_model_len)]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.enable_prefix_caching is not None:
            flag = (
                "--enable-prefix-caching"
                if self.enable_prefix_caching
                else "--no-enable-prefix-caching"
            )
            args.append(flag)
        if self.quantization is not None:
            args += ["--quantization", self.quantization]
        if self.dtype is not None:
            args += ["--dtype", self.dtype]
        if self.kv_cache_dtype is not None:
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.tensor_parallel_size > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.pipeline_parallel_size > 1:
            args += ["--pipeline-parallel-size", str(self.pipeline_parallel_size)]
        if self.enable_per_request_metrics:
            # Puts TTFT/queue/generation times in the final usage chunk: the sidecar meters with them.
            args.append("--enable-per-request-metrics")
        args += self.extra_args
        return args

    def command_line(self, model: str, host: str = "0.0.0.0", port: int = 8000) -> str:
        """A copy-pastable shell line: env assignments, then `vllm serve ...`."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*env, shlex.join(["vllm", "serve", *self.vllm_args(model, host, port)])])


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "profile"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def profile_from_mapping(data: Any, *, default_name: str, source: str) -> Profile:
    """Validate a parsed YAML document as a Profile; `name` defaults to the file's stem."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping")
    data = {"name": default_name, **data}
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{source}: invalid profile: {_format_validation_error(exc)}") from None


def _resolve_path(name_or_path: str) -> Path:
    looks_like_name = "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml"))
    if looks_like_name:
        for suffix in (".yaml", ".yml"):
            candidate = PROFILES_DIR / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError(f"no profile named {name_or_path!r} (known: {known})")
    path = Path(name_or_path)
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}")
    return path


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name (`tiny-cpu`) or any profile file by path."""
    path = _resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ProfileError(f"{path}{line}: malformed YAML: {problem}") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    return profile_from_mapping(data, default_name=path.stem, source=str(path))


def available_profiles() -> list[str]:
    """Names of the profiles shipped in serving/profiles/."""
    if not PROFILES_DIR.is_dir():
        return []
    return sorted(p.stem for p in PROFILES_DIR.iterdir() if p.suffix in (".yaml", ".yml"))
