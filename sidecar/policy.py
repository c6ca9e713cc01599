"""The policy the sidecar enforces: keys, features, engines, compiled for O(1) lookups.

`PolicyStore` holds the current compiled `Policy`. It is filled from a standalone YAML file
(`GPULEDGER_POLICY_FILE`), from the last good snapshot kept on disk, or by the control-plane sync
(`sidecar/policy_sync.py` calls `replace`). Every accepted snapshot is written to
`<state_dir>/policy.json`, so a restarted sidecar keeps serving while the control plane is down.

Key lookup: a dict keyed by the SHA-256 of the secret, then `hmac.compare_digest` on the stored
hash. The dict lookup's timing can only depend on the hash of what the caller sent, which the
caller already knows; learning how far it matches a stored *hash* does not help find a secret
(SHA-256 preimages), so this is as safe as a constant-time scan and stays O(1) with many keys.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gpuledger.contracts import (
    EnginePolicy,
    FeaturePolicy,
    KeyPolicy,
    PolicySnapshot,
    hash_key,
)

log = logging.getLogger(__name__)

OTHER = "other"


@dataclass(slots=True)
class Policy:
    snapshot: PolicySnapshot
    keys_by_hash: dict[str, KeyPolicy] = field(default_factory=dict)
    features: dict[str, FeaturePolicy] = field(default_factory=dict)
    engines: dict[str, EnginePolicy] = field(default_factory=dict)
    engines_by_model: dict[str, EnginePolicy] = field(default_factory=dict)
    # Model names allowed as metric label values (bounded: they come from the policy).
    known_models: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, snapshot: PolicySnapshot) -> Policy:
        models: set[str] = set()
        by_model: dict[str, EnginePolicy] = {}
        for engine in snapshot.engines:
            if engine.model:
                models.add(engine.model)
                by_model.setdefault(engine.model, engine)
        for key in snapshot.keys:
            models.update(m for m in key.models if m != "*")
        return cls(
            snapshot=snapshot,
            keys_by_hash={k.key_hash.lower(): k for k in snapshot.keys},
            features={f.name: f for f in snapshot.features},
            engines={e.name: e for e in snapshot.engines},
            engines_by_model=by_model,
            known_models=frozenset(models),
        )

    @property
    def version(self) -> str:
        return self.snapshot.version

    def key_for_secret(self, secret: str) -> KeyPolicy | None:
        digest = hash_key(secret)
        key = self.keys_by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.key_hash.lower(), digest):
            return None
        return key

    def engine_for(self, model: str) -> EnginePolicy | None:
        """The engine serving `model`, else the first engine (vLLM then answers 404 itself)."""
        engine = self.engines_by_model.get(model)
        if engine is not None:
            return engine
        return self.snapshot.engines[0] if self.snapshot.engines else None

    def model_label(self, model: str) -> str:
        return model if model in self.known_models else OTHER

    def feature_label(self, feature: str) -> str:
        return feature if feature in self.features else OTHER


def key_usable(key: KeyPolicy, now: datetime | None = None) -> str | None:
    """Why `key` may not be used now (`key_disabled`, `key_expired`), or None."""
    if not key.enabled:
        return "key_disabled"
    if key.expires_at is not None:
        expires = key.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= (now or datetime.now(UTC)):
            return "key_expired"
    return None


def load_policy_file(path: Path) -> PolicySnapshot:
    """Read a YAML (or JSON) PolicySnapshot. Keys carry `key_hash` only, never a secret."""
    raw: Any = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return PolicySnapshot.model_validate(raw)


class PolicyStore:
    """The current policy. Reads are a plain attribute access (`store.current`) on the hot path."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self._state_dir = state_dir
        self.current: Policy = Policy.compile(PolicySnapshot())
        self.loaded = False
        self.loaded_at: float | None = None  # time.monotonic() of the last replace

    @property
    def version(self) -> str:
        return self.current.version

    @property
    def state_path(self) -> Path | None:
        return self._state_dir / "policy.json" if self._state_dir else None

    def replace(self, snapshot: PolicySnapshot, *, persist: bool = True) -> None:
        """Swap in a new snapshot (atomic for readers) and keep it on disk as the last good one."""
        self.current = Policy.compile(snapshot)
        self.loaded = True
        self.loaded_at = time.monotonic()
        if persist:
            self._persist(snapshot)

    def load_last_good(self) -> bool:
        """Load the snapshot kept on disk, if any. Returns whether one was loaded."""
        path = self.state_path
        if path is None or not path.exists():
            return False
        try:
            snapshot = PolicySnapshot.model_validate_json(path.read_bytes())
        except ValueError:
            log.warning("ignoring unreadable last-good policy at %s", path)
            return False
        self.replace(snapshot, persist=False)
        return True

    def _persist(self, snapshot: PolicySnapshot) -> None:
        path = self.state_path
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(snapshot.model_dump_json())
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            log.warning("could not keep the policy on disk: %s", exc)
