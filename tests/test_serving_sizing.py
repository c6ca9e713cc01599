"""`gpuledger size` and serving/models.py: arithmetic that must agree with published numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuledger.cli import main
from serving.models import KNOWN_MODELS, load_model, lookup_known
from serving.sizing import GIB, RUNTIME_OVERHEAD_GIB

LLAMA_8B = ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100-80GB"]


def _size_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["size", *args, "--json"])
    out, err = capsys.readouterr()
    assert err == ""
    result: dict[str, Any] = json.loads(out)
    return code, result


def _size_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["size", *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("gpuledger: error: ")
    assert err.count("\n") == 1  # one line, no traceback
    return err


@pytest.mark.parametrize(
    ("name", "billions"),
    # Parameter counts the model cards publish.
    [("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("qwen2.5-7b", 7.62),
     ("qwen2.5-14b", 14.77), ("qwen2.5-72b", 72.71), ("mistral-7b", 7.25)],
)  # fmt: skip
def test_parameter_counts_match_the_model_cards(name: str, billions: float) -> None:
    assert KNOWN_MODELS[name].param_count() / 1e9 == pytest.approx(billions, abs=0.006)


def test_llama_8b_fp16_weights_and_kv_per_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, r = _size_json(capsys, *LLAMA_8B, "--max-model-len", "8192", "--max-num-seqs", "32")
    assert code == 0
    assert r["params"] == 8_030_261_248
    assert r["weights_gib"] == pytest.approx(14.96, abs=0.01)  # 8.03e9 x 2 B
    assert r["kv_bytes_per_token"] == 128 * 1024  # 2 x 32 layers x 8 heads x 128 x 2 B
    assert r["kv_workload_gib"] == pytest.approx(32.0)  # 8192 x 32 x 128 KiB
    assert r["budget_gib"] == pytest.approx(79.18 * 0.9)
    assert r["kv_pool_gib"] == pytest.approx(
        r["budget_gib"] - r["weights_gib"] - RUNTIME_OVERHEAD_GIB
    )
    assert r["kv_pool_tokens"] == int(r["kv_pool_gib"] * GIB // (128 * 1024))
    assert (r["fits"], r["starts"], r["min_tp"], r["tp"]) == (True, True, 1, 1)


def test_llama_8b_overcommitted_workload_starts_but_does_not_fit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["size", *LLAMA_8B, "--max-model-len", "8192", "--max-num-seqs", "64"])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        "kv per token      128.0 KiB per GPU (2 x 32 layers x 8 kv heads x 128 head_dim x 2 B)"
        in out
    )
    assert "kv pool           54.30 GiB = 444,862 tokens = 54 full-length sequences" in out
    assert "fits              no: worst case needs 80.96 GiB > 71.26 GiB" in out
    assert "minimum tp        2" in out


def test_llama_70b_fp16_needs_several_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", "llama-3.1-70b", "--gpu", "H100-80GB"]
    code, r = _size_json(capsys, *base, "--max-model-len", "2048", "--max-num-seqs", "8")
    assert code == 1
    assert r["weights_gib"] == pytest.approx(131.4, abs=0.1)  # more than one 80 GB GPU holds
    assert (r["starts"], r["kv_pool_tokens"]) == (False, 0)
    assert r["min_tp"] == 2  # 65.7 GiB/GPU leaves ~3.5 GiB of KV: enough for 8 x 2048 tokens
    _, bigger = _size_json(capsys, *base, "--max-model-len", "8192", "--max-num-seqs", "16")
    assert bigger["min_tp"] == 4
    code, tp4 = _size_json(
        capsys, *base, "--max-model-len", "8192", "--max-num-seqs", "16", "--tp", "4"
    )
    assert code == 0
    assert tp4["weights_gib"] == pytest.approx(r["weights_gib"] / 4)
    assert tp4["kv_bytes_per_token"] == 80 * 1024  # 8 KV heads sharded over 4 GPUs
    assert main(["size", *base, "--max-model-len", "8192", "--max-num-seqs", "64"]) == 1
    assert "fits              no: vLLM will not start" in capsys.readouterr().out


def test_awq_and_fp8(capsys: pytest.CaptureFixture[str]) -> None:
    work = ["--max-model-len", "8192", "--max-num-seqs", "12", "--gpu", "L4-24GB"]
    # The quantization is taken from the checkpoint's name when not given.
    code, awq = _size_json(
        capsys, "--model", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", *work
    )
    assert code == 0
    assert awq["quantization"] == "awq"
    # 6.98 B linear weights at 4 bits + group scales/zeros, 1.05 B embedding/head weights at 16 bits.
    assert awq["weights_gib"] == pytest.approx(5.33, abs=0.01)
    _, fp8 = _size_json(capsys, "--model", "llama-3.1-8b", *work, "--quantization", "fp8",
                        "--kv-cache-dtype", "fp8")  # fmt: skip
    assert fp8["weights_gib"] == pytest.approx(8.46, abs=0.01)
    assert fp8["kv_bytes_per_token"] == 64 * 1024


def test_kv_heads_are_replicated_when_fewer_than_tp_ranks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    qwen = ["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "A10G-24GB", "--max-num-seqs", "4"]
    _, tp1 = _size_json(capsys, *qwen, "--max-model-len", "4096")
    assert tp1["kv_bytes_per_token"] == 2 * 28 * 4 * 128 * 2
    _, tp4 = _size_json(capsys, *qwen, "--max-model-len", "4096", "--tp", "4")
    assert tp4["kv_bytes_per_token"] == 2 * 28 * 1 * 128 * 2  # 4 KV heads, 1 per GPU
    err = _size_error(capsys, *qwen, "--max-model-len", "4096", "--tp", "8")
    assert "tensor parallel size 8 must divide the 28 attention heads" in err


def test_warns_when_max_model_len_exceeds_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    _, r = _size_json(capsys, "--model", "qwen2.5-7b", "--gpu", "H200-141GB",
                      "--max-model-len", "65536", "--max-num-seqs", "1")  # fmt: skip
    assert r["warnings"] == [
        "max_model_len 65536 exceeds the model's max_position_embeddings 32768: vLLM will refuse it"
    ]


def test_profile_supplies_defaults_and_flags_override(capsys: pytest.CaptureFixture[str]) -> None:
    code, r = _size_json(capsys, "--profile", "llama-3.1-70b-tp4")
    assert code == 0
    assert (r["tp"], r["gpu"], r["model"]) == (4, "H100-80GB", "llama-3.1-70b")
    code, r = _size_json(capsys, "--profile", "llama-3.1-70b-tp4", "--tp", "2")
    assert (code, r["tp"]) == (1, 2)
    # The dev profile runs on CPU: it has no GPU to size against unless one is named.
    err = _size_error(capsys, "--profile", "tiny-cpu", "--model", "llama-3.1-8b")
    assert "unknown GPU 'cpu'" in err


def test_sizes_from_a_config_json_file_or_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 512, "tie_word_embeddings": True, "model_type": "llama",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    for model in (str(tmp_path / "config.json"), str(tmp_path)):
        code, r = _size_json(capsys, "--model", model, "--gpu", "L4-24GB",
                             "--max-model-len", "512", "--max-num-seqs", "16")  # fmt: skip
        assert code == 0
        # embeddings (tied) + 2 x (q,k,v,o + gate/up/down) + norms
        assert (
            r["params"]
            == 512 * 256 + 2 * (256 * (256 + 128 + 128) + 256 * 256 + 3 * 256 * 512) + 5 * 256
        )
        assert r["kv_bytes_per_token"] == 2 * 2 * 2 * 64 * 2
    arch = load_model(str(tmp_path))
    assert arch.head_dim == 64 and arch.tie_word_embeddings


def test_quantization_is_read_from_the_checkpoint_config(tmp_path: Path) -> None:
    llama = KNOWN_MODELS["llama-3.1-8b"]
    config = {
        "hidden_size": llama.hidden_size, "intermediate_size": llama.intermediate_size,
        "num_hidden_layers": llama.num_layers, "num_attention_heads": llama.num_heads,
        "num_key_value_heads": llama.num_kv_heads, "vocab_size": llama.vocab_size,
        "max_position_embeddings": 131072, "quantization_config": {"quant_method": "gptq", "bits": 4},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = load_model(str(tmp_path / "config.json"))
    assert arch.quantization == "gptq"
    assert arch.param_count() == llama.param_count()


def test_known_models_by_short_name_and_hub_id() -> None:
    assert lookup_known("meta-llama/Meta-Llama-3.1-70B-Instruct") == KNOWN_MODELS["llama-3.1-70b"]
    assert lookup_known("mistralai/Mistral-7B-Instruct-v0.3") == KNOWN_MODELS["mistral-7b"]
    assert lookup_known("Qwen/Qwen2.5-14B-Instruct-AWQ").quantization == "awq"  # type: ignore[union-attr]
    assert lookup_known("org/unknown-13b") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "org/unknown-13b"],
            "unknown model 'org/unknown-13b': give a path to its config.json",
        ),
        (["--model", "./nowhere/config.json"], "model config not found: ./nowhere/config.json"),
        (
            ["--model", "llama-3.1-8b", "--gpu", "RTX-9090"],
            "unknown GPU 'RTX-9090' (known: H100-80GB",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu-memory-utilization", "1.5"],
            "gpu_memory_utilization must be in (0, 1]",
        ),
        (
            ["--model", "llama-3.1-8b", "--tp", "3"],
            "tensor parallel size 3 must divide the 32 attention heads",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    defaults = {"--gpu": "H100-80GB", "--max-model-len": "4096", "--max-num-seqs": "8"}
    for flag, value in defaults.items():
        if flag not in args:
            args = [*args, flag, value]
    assert message in _size_error(capsys, *args)


def test_missing_options_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = _size_error(capsys, "--model", "llama-3.1-8b")
    assert (
        "size needs --max-model-len, --max-num-seqs, --gpu (or a --profile that sets them)" in err
    )


def test_malformed_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = ["--gpu", "H100-80GB", "--max-model-len", "4096", "--max-num-seqs", "8"]
    bad_json = tmp_path / "config.json"
    bad_json.write_text('{"hidden_size": 4096,\n "num_hidden_layers": }\n')
    assert f"{bad_json}:2: malformed JSON" in _size_error(capsys, "--model", str(bad_json), *work)
    bad_json.write_text('{"hidden_size": 4096, "num_attention_heads": 32}')
    err = _size_error(capsys, "--model", str(bad_json), *work)
    assert "config.json needs a positive integer 'num_hidden_layers'" in err
    bad_json.write_text("[1, 2]")
    assert "config.json must be a JSON object" in _size_error(
        capsys, "--model", str(bad_json), *work
    )
    bad_yaml = tmp_path / "profile.yaml"
    bad_yaml.write_text("model: org/m\nmax_model_len: {\n")
    assert "malformed YAML" in _size_error(capsys, "--profile", str(bad_yaml))
    missing = tmp_path / "absent.yaml"
    assert "profile file not found" in _size_error(capsys, "--profile", str(missing))
