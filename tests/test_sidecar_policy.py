"""Policy compilation, key lookup, the last good policy on disk, and the auth rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpuledger.contracts import KeyPolicy, PolicySnapshot, hash_key
from sidecar.auth import authenticate, check_model, resolve_feature
from sidecar.errors import AuthenticationFailed, PermissionDenied
from sidecar.policy import OTHER, Policy, PolicyStore, load_policy_file
from tests.sidecar_support import DEV_POLICY, DEV_SECRET


def test_dev_policy_file_loads_and_its_key_authenticates() -> None:
    snapshot = load_policy_file(DEV_POLICY)
    policy = Policy.compile(snapshot)
    key = authenticate(policy, f"Bearer {DEV_SECRET}")
    assert key.id == "key_dev"
    assert resolve_feature(policy, key, None).name == "default"
    chat = resolve_feature(policy, key, "chat")
    assert (chat.over_cap, chat.default_max_tokens, chat.max_tokens_cap) == ("clamp", 128, 512)
    assert policy.engine_for("tiny") is not None and policy.engine_for("tiny").url.endswith(":8000")  # type: ignore[union-attr]
    # The secret may be named in a comment for developers, never in the data itself.
    data_lines = [
        ln for ln in DEV_POLICY.read_text().splitlines() if not ln.lstrip().startswith("#")
    ]
    assert all(DEV_SECRET not in ln for ln in data_lines)


def test_auth_failures() -> None:
    now = datetime.now(UTC)
    keys = [
        KeyPolicy(id="a", name="a", key_hash=hash_key("glk_a"), features=["x"], default_feature="x",
                  models=["tiny"]),
        KeyPolicy(id="b", name="b", key_hash=hash_key("glk_b"), features=["x"], default_feature="x",
                  enabled=False),
        KeyPolicy(id="c", name="c", key_hash=hash_key("glk_c"), features=["x"], default_feature="x",
                  expires_at=now - timedelta(seconds=1)),
    ]  # fmt: skip
    policy = Policy.compile(PolicySnapshot(keys=keys))
    for header in (None, "", "Basic glk_a", "Bearer ", "Bearer glk_z"):
        with pytest.raises(AuthenticationFailed):
            authenticate(policy, header)
    with pytest.raises(PermissionDenied) as denied:
        authenticate(policy, "Bearer glk_b")
    assert denied.value.code == "key_disabled"
    with pytest.raises(AuthenticationFailed) as expired:
        authenticate(policy, "Bearer glk_c")
    assert expired.value.code == "key_expired" and "glk_c" not in expired.value.message
    key = authenticate(policy, "bearer  glk_a ")
    with pytest.raises(PermissionDenied) as feature:
        resolve_feature(policy, key, "y")
    assert feature.value.code == "feature_not_allowed"
    assert resolve_feature(policy, key, "x").default_max_tokens == 256  # undefined: defaults
    with pytest.raises(PermissionDenied) as model:
        check_model(key, "big")
    assert model.value.code == "model_not_allowed"


def test_labels_are_bounded_by_the_policy() -> None:
    policy = Policy.compile(load_policy_file(DEV_POLICY))
    assert policy.model_label("tiny") == "tiny"
    assert policy.model_label("user-chosen-string") == OTHER
    assert policy.feature_label("chat") == "chat" and policy.feature_label("zzz") == OTHER


def test_last_good_policy_survives_a_restart(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    assert not store.loaded and not store.load_last_good()
    store.replace(load_policy_file(DEV_POLICY))
    restarted = PolicyStore(tmp_path)
    assert restarted.load_last_good() and restarted.loaded
    assert restarted.version == "dev-1"
    assert restarted.current.key_for_secret(DEV_SECRET) is not None
    (tmp_path / "policy.json").write_text("{broken")
    assert not PolicyStore(tmp_path).load_last_good()
