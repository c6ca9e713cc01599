"""serving/profiles.py: loading shipped and user profiles, and the `vllm serve` arguments."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from serving.profiles import Profile, ProfileError, available_profiles, load_profile


def test_tiny_cpu_profile_is_what_the_engine_launcher_expects(tmp_path: Path) -> None:
    profile = load_profile("tiny-cpu")
    assert profile.name == "tiny-cpu"
    assert profile.served_model_name == "tiny"
    assert profile.max_model_len == 512
    assert profile.device == "cpu"
    assert profile.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert profile.resolved_model(tmp_path) == str(tmp_path / "models" / "tiny")
    args = profile.vllm_args(profile.resolved_model(tmp_path), "127.0.0.1", 8123)
    assert args[:5] == [str(tmp_path / "models" / "tiny"), "--host", "127.0.0.1", "--port", "8123"]
    assert args[args.index("--served-model-name") + 1] == "tiny"
    assert args[args.index("--max-model-len") + 1] == "512"
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert "--enable-per-request-metrics" in args
    assert args[-2:] == ["--generation-config", "vllm"]
    assert "--tensor-parallel-size" not in args


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.hourly_rate_usd is not None


def test_shipped_profiles_include_the_gpu_examples() -> None:
    assert {"tiny-cpu", "llama-3.1-8b-h100", "llama-3.1-8b-awq", "llama-3.1-70b-tp4"} <= set(
        available_profiles()
    )
    tp4 = load_profile("llama-3.1-70b-tp4")
    assert tp4.gpus == 4
    args = tp4.vllm_args(tp4.resolved_model(Path("/x")), "0.0.0.0", 8000)
    assert args[0] == "meta-llama/Llama-3.1-70B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert "--enable-prefix-caching" in args


def test_only_set_flags_are_emitted_and_prefix_caching_can_be_turned_off() -> None:
    minimal = Profile(name="m", model="org/m", max_model_len=1024, enable_per_request_metrics=False)
    assert minimal.vllm_args("org/m", "h", 1) == [
        "org/m", "--host", "h", "--port", "1", "--max-model-len", "1024",
    ]  # fmt: skip
    off = minimal.model_copy(update={"enable_prefix_caching": False, "pipeline_parallel_size": 2})
    args = off.vllm_args("org/m", "h", 1)
    assert "--no-enable-prefix-caching" in args
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert off.gpus == 2


def test_command_line_is_copy_pastable() -> None:
    profile = Profile(
        name="p", model="org/m", max_model_len=64, served_model_name="my model",
        env={"A": "1 2"}, extra_args=["--seed", "7"],
    )  # fmt: skip
    line = profile.command_line("org/m", "127.0.0.1", 9000)
    words = shlex.split(line)
    assert words[0] == "A=1 2"
    assert words[1:3] == ["vllm", "serve"]
    assert words[3:] == profile.vllm_args("org/m", "127.0.0.1", 9000)


def test_load_by_path_defaults_name_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("model: org/m\nmax_model_len: 2048\ntensor_parallel_size: 2\n")
    profile = load_profile(str(path))
    assert profile.name == "mine"
    assert profile.gpus == 2
    assert profile.resolved_model(tmp_path) == "org/m"


def test_profile_is_frozen() -> None:
    profile = load_profile("tiny-cpu")
    with pytest.raises(ValueError):
        profile.max_model_len = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("model: org/m\n", "max_model_len: Field required"),
        ("model: org/m\nmax_model_len: 0\n", "max_model_len: Input should be greater than 0"),
        (
            "model: org/m\nmax_model_length: 10\n",
            "max_model_length: Extra inputs are not permitted",
        ),
        ("model: org/m\nmax_model_len: 8\nquantization: int3\n", "quantization"),
        ("model: org/m\nmax_model_len: 8\ndevice: tpu\n", "device"),
        ("- a\n- b\n", "a profile must be a YAML mapping"),
        ("model: [unclosed\n", "malformed YAML"),
    ],
)
def test_invalid_profiles_give_one_line_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"no profile named 'nope' \(known: .*tiny-cpu"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="profile file not found"):
        load_profile(str(tmp_path / "absent.yaml"))


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)
