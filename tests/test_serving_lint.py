"""`gpuledger lint`: findings with YAML line numbers, exit codes, file kinds decided by content."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from gpuledger.cli import main
from serving.profiles import available_profiles

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _lint(capsys: pytest.CaptureFixture[str], *paths: str | Path) -> tuple[int, list[str], str]:
    code = main(["lint", *map(str, paths)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_shipped_profiles_and_dev_policy_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _lint(
        capsys, REPO / "serving" / "profiles", REPO / "deploy" / "policy.dev.yaml"
    )
    assert code == 0, out
    assert out == [f"ok: {len(available_profiles()) + 1} config files checked"]
    assert err == ""


def test_quiet_prints_nothing_when_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "p.yaml", "model: org/m\nmax_model_len: 4096\n")
    assert main(["lint", "-q", str(path)]) == 0
    assert capsys.readouterr().out == ""


def test_profile_without_max_model_len(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path,
        "p.yaml",
        """
        # a profile with no context limit
        model: meta-llama/Llama-3.1-8B-Instruct
        served_model_name: llama
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [f"{path}:2: profile has no max_model_len (vLLM would default to the model's "
                   "full context, so one request may run that long)"]  # fmt: skip


def test_long_context_needs_a_justification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = _write(
        tmp_path,
        "bare.yaml",
        """
        model: meta-llama/Llama-3.1-8B-Instruct
        served_model_name: llama
        max_model_len: 131072
    """,
    )
    justified = _write(
        tmp_path,
        "justified.yaml",
        """
        model: meta-llama/Llama-3.1-8B-Instruct
        max_model_len: 131072
        justification: contract review over whole documents; 4 seqs, own GPU
    """,
    )
    code, out, _ = _lint(capsys, bare, justified)
    assert code == 1
    assert len(out) == 1
    assert out[0].startswith(f"{bare}:3: max_model_len 131072 >= 131072 needs a `justification:`")


def test_max_model_len_above_the_known_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "qwen.yaml",
        """
        model: Qwen/Qwen2.5-7B-Instruct
        max_num_seqs: 8
        max_model_len: 65536
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [f"{path}:3: max_model_len 65536 exceeds what Qwen/Qwen2.5-7B-Instruct supports "
                   "(max_position_embeddings 32768)"]  # fmt: skip


def test_max_model_len_above_a_local_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "mymodel"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 512,
        "max_position_embeddings": 512,
    }))  # fmt: skip
    # The model path is relative to the profile's directory.
    path = _write(tmp_path, "local.yaml", "model: mymodel\nmax_model_len: 1024\n")
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [f"{path}:2: max_model_len 1024 exceeds what mymodel supports "
                   "(max_position_embeddings 512)"]  # fmt: skip


def test_invalid_profile_fields_point_at_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "typo.yaml",
        """
        model: org/m
        max_model_len: 2048
        gpu_memory_utilisation: 0.9
        tensor_parallel_size: 0
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [
        f"{path}:4: invalid profile field tensor_parallel_size: Input should be greater than or equal to 1",
        f"{path}:3: invalid profile field gpu_memory_utilisation: Extra inputs are not permitted",
    ]


def test_policy_feature_without_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path,
        "policy.yaml",
        """
        version: "7"
        keys:
          - id: k1
            name: team-a
            key_hash: abc
            features: [search, summarise]
            default_feature: search
        features:
          - name: search
            max_tokens_cap: 256
          - name: summarise
            default_max_tokens: 128
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [f"{path}:11: feature 'summarise' has no max_tokens_cap: output length (and GPU "
                   "time) per request would be unbounded"]  # fmt: skip


def test_policy_feature_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path,
        "policy.yaml",
        """
        keys:
          - id: k1
            name: team-a
            key_hash: abc
            features: [search, ghost]
            default_feature: search
          - id: k2
        features:
          - name: search
            max_tokens_cap: 256
            default_max_tokens: 512
          - name: zero
            max_tokens_cap: 0
          - name: odd
            max_tokens_cap: 64
            over_cap: explode
          - just a string
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [
        f"{path}:11: feature 'search': default_max_tokens 512 is above max_tokens_cap 256",
        f"{path}:13: feature 'zero': max_tokens_cap must be a positive integer",
        f"{path}:16: feature 'odd': over_cap: Input should be 'reject' or 'clamp'",
        f"{path}:17: features[3] must be a mapping",
        f"{path}:7: keys.1.name: Field required",
        f"{path}:7: keys.1.key_hash: Field required",
        f"{path}:7: keys.1.features: Field required",
        f"{path}:7: keys.1.default_feature: Field required",
        f"{path}:5: key 'team-a' may tag feature 'ghost', which has no entry under features (no "
        "max_tokens_cap)",
    ]


def test_policy_snapshot_without_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "policy.yaml",
        """
        version: "1"
        keys:
          - {id: k1, name: ci, key_hash: abc, features: [batch], default_feature: batch}
    """,
    )
    code, out, _ = _lint(capsys, path)
    assert code == 1
    assert out == [f"{path}:3: key 'ci' may tag feature 'batch', which has no entry under features "
                   "(no max_tokens_cap)"]  # fmt: skip


def test_feature_and_agent_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An agent naming a model and an engine env is still an agent config, not a vLLM profile.
    agent = _write(tmp_path, "agent.yaml", "kind: agent\nname: triage\nmodel: tiny\nenv: {A: b}\n")
    feature = _write(tmp_path, "feature.yaml", "kind: feature\nname: chat\nmax_tokens: 300\n")
    code, out, _ = _lint(capsys, agent, feature)
    assert code == 1
    assert out == [f"{agent}:1: feature 'triage' has no max_tokens_cap: output length (and GPU time) "
                   "per request would be unbounded"]  # fmt: skip


def test_multiple_documents_and_unrelated_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "multi.yaml",
        """
        groups: [a, b]
        ---
        model: org/m
        max_model_len: 1024
        ---
        model: org/n
        dtype: float16
    """,
    )
    other = _write(tmp_path, "prometheus.yml", "scrape_configs: []\n")
    code, out, _ = _lint(capsys, path, other)
    assert code == 1
    assert out[0].startswith(f"{path}:6: profile has no max_model_len")


def test_directories_expand_to_yaml_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "a.yaml", "model: org/m\nmax_model_len: 64\n")
    _write(tmp_path, "b.yml", "kind: feature\nname: f\n")
    _write(tmp_path, "c.txt", "model: org/m\n")  # not YAML by name: skipped
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "d.yaml", "model: org/m\nserved_model_name: x\n")  # not recursive
    code, out, _ = _lint(capsys, tmp_path)
    assert code == 1
    assert out == [f"{tmp_path / 'b.yml'}:1: feature 'f' has no max_tokens_cap: output length (and GPU "
                   "time) per request would be unbounded"]  # fmt: skip


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _lint(capsys, tmp_path / "absent.yaml")
    assert code == 2
    assert out == []
    assert err == f"gpuledger: error: no such file or directory: {tmp_path / 'absent.yaml'}\n"


def test_malformed_yaml_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "bad.yaml", "model: org/m\nmax_model_len: [1, 2\nfoo: bar\n")
    code, out, err = _lint(capsys, path)
    assert code == 2
    assert out == []
    assert err.startswith(f"gpuledger: error: {path}:3: malformed YAML:")
    assert err.count("\n") == 1  # one line, no traceback


def test_pre_commit_hook_definition_runs_this_command() -> None:
    import yaml

    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "gpuledger-lint")
    assert hook["entry"] == "gpuledger lint -q"
    assert hook["language"] == "python"
