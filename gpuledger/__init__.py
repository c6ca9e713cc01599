"""gpuledger: guardrails, metering and GPU-hour budgets for self-hosted vLLM."""

__version__ = "0.1.0"
