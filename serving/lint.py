"""`gpuledger lint`: catch serving configs that make GPU spend unbounded, before they ship.

Two kinds of YAML file are checked, recognised by content (not by name):
- vLLM profiles (serving/profiles.py): `max_model_len` must be set (vLLM's default is the model's
  full context, e.g. 128K tokens for Llama 3.1: the KV cache must hold one such sequence and a
  single request may run for minutes), must not exceed what the model supports, and needs a written `justification`
  at 131072 tokens or more.
- feature/agent configs and policy snapshots (contracts.PolicySnapshot, which the sidecar reads in
  standalone mode): every feature needs an explicit output cap (`max_tokens_cap` or `max_tokens`).
Findings print as `file:line: message` (lines from the YAML node marks) so editors and CI annotate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gpuledger.contracts import FeaturePolicy, PolicySnapshot
from serving.models import ModelError, local_config_path, lookup_known, read_config_file
from serving.profiles import LOCAL_TINY, Profile

LONG_CONTEXT = 131072
_PROFILE_KEYS = frozenset(Profile.model_fields) - {"name", "model"}
_CAP_KEYS = ("max_tokens_cap", "max_tokens")


class LintError(ValueError):
    """A file that cannot be linted at all (missing, unreadable, malformed YAML)."""


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def expand_paths(paths: Iterable[str]) -> list[Path]:
    """Files as given; directories become their *.yaml / *.yml files (not recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            raise LintError(f"no such file or directory: {raw}")
    return files


def _documents(path: Path) -> Iterator[tuple[yaml.Node, Any]]:
    """Each YAML document as (node tree with line marks, plain Python value)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LintError(f"{path}: cannot read: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise LintError(f"{path}{line}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _child(node: yaml.Node, key: str | int) -> yaml.Node | None:
    """The value node under a mapping key or a sequence index, if any."""
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        return next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def _line_at(node: yaml.Node, *path: str | int) -> int:
    """Line of the deepest node that exists along `path` (falls back to the parent's line)."""
    line = _line(node)
    for key in path:
        child = _child(node, key)
        if child is None:
            break
        node, line = child, _line(child)
    return line


def _is_profile(data: dict[str, Any]) -> bool:
    return "model" in data and bool(_PROFILE_KEYS & data.keys())


def _is_policy_snapshot(data: dict[str, Any]) -> bool:
    keys = data.get("keys")
    return isinstance(keys, list) and any(isinstance(k, dict) and "key_hash" in k for k in keys)


def _is_feature_config(data: dict[str, Any]) -> bool:
    return (
        isinstance(data.get("features"), list)
        or data.get("kind") in ("feature", "agent")
        or _is_policy_snapshot(data)
    )


def _model_max_positions(model: str, base: Path) -> int | None:
    """max_position_embeddings of a known architecture or of a local model's config.json."""
    if model == LOCAL_TINY:
        return None  # built at engine start; its config does not exist yet
    for candidate in (base / model, Path(model)):
        config = local_config_path(str(candidate))
        if config is not None:
            try:
                return read_config_file(config).max_position_embeddings
            except ModelError:
                return None
    arch = lookup_known(model)
    return arch.max_position_embeddings if arch else None


def lint_profile(path: Path, node: yaml.Node, data: dict[str, Any]) -> list[Finding]:
    where = str(path)
    out: list[Finding] = []
    length = data.get("max_model_len")
    if length is None:
        out.append(
            Finding(
                where,
                _line(node),
                "profile has no max_model_len (vLLM would default to the "
                "model's full context, so one request may run that long)",
            )
        )
    elif isinstance(length, int) and not isinstance(length, bool):
        line = _line_at(node, "max_model_len")
        justification = data.get("justification")
        if length >= LONG_CONTEXT and not (
            isinstance(justification, str) and justification.strip()
        ):
            out.append(
                Finding(
                    where,
                    line,
                    f"max_model_len {length} >= {LONG_CONTEXT} needs a "
                    "`justification:` (KV cache and latency grow with it)",
                )
            )
        model = data.get("model")
        limit = _model_max_positions(model, path.parent) if isinstance(model, str) else None
        if limit is not None and length > limit:
            out.append(
                Finding(
                    where,
                    line,
                    f"max_model_len {length} exceeds what {model} supports "
                    f"(max_position_embeddings {limit})",
                )
            )
    try:
        Profile.model_validate({"name": path.stem, **data})
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] == ("max_model_len",) and err["type"] == "missing":
                continue  # reported above, with a better message
            loc = [p for p in err["loc"] if isinstance(p, str | int)]
            field = ".".join(str(p) for p in loc) or "profile"
            out.append(
                Finding(where, _line_at(node, *loc), f"invalid profile field {field}: {err['msg']}")
            )
    return out


def _lint_feature(where: str, node: yaml.Node, item: Any, label: str) -> list[Finding]:
    if not isinstance(item, dict):
        return [Finding(where, _line(node), f"{label} must be a mapping")]
    name = item.get("name", "?")
    cap_key = next((k for k in _CAP_KEYS if k in item), None)
    if cap_key is None:
        return [
            Finding(
                where,
                _line(node),
                f"feature {name!r} has no max_tokens_cap: output length "
                "(and GPU time) per request would be unbounded",
            )
        ]
    cap = item[cap_key]
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        return [
            Finding(
                where,
                _line_at(node, cap_key),
                f"feature {name!r}: {cap_key} must be a positive integer",
            )
        ]
    out: list[Finding] = []
    default = item.get("default_max_tokens")
    if isinstance(default, int) and default > cap:
        out.append(
            Finding(
                where,
                _line_at(node, "default_max_tokens"),
                f"feature {name!r}: default_max_tokens {default} is above {cap_key} {cap}",
            )
        )
    if "max_tokens_cap" in item:  # an item in FeaturePolicy shape: check the rest of its fields
        try:
            FeaturePolicy.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = [p for p in err["loc"] if isinstance(p, str | int)]
                out.append(
                    Finding(
                        where,
                        _line_at(node, *loc),
                        f"feature {name!r}: {'.'.join(map(str, loc))}: {err['msg']}",
                    )
                )
    return out


def lint_feature_config(path: Path, node: yaml.Node, data: dict[str, Any]) -> list[Finding]:
    where = str(path)
    if data.get("kind") in ("feature", "agent"):
        return _lint_feature(where, node, data, str(data["kind"]))
    features_node = _child(node, "features")
    out: list[Finding] = []
    features = data.get("features")
    features = features if isinstance(features, list) else []
    for i, item in enumerate(features):
        item_node = _child(features_node, i) if features_node is not None else None
        out += _lint_feature(where, item_node or node, item, f"features[{i}]")
    if isinstance(data.get("keys"), list):
        out += _lint_snapshot(where, node, data, features)
    return out


def _lint_snapshot(
    where: str, node: yaml.Node, data: dict[str, Any], features: list[Any]
) -> list[Finding]:
    """A standalone PolicySnapshot: its other sections must parse, and every feature a key may tag
    must be defined, or requests under it would run with no cap of their own."""
    out: list[Finding] = []
    try:
        PolicySnapshot.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = [p for p in err["loc"] if isinstance(p, str | int)]
            if loc and loc[0] != "features":  # features were reported item by item above
                out.append(
                    Finding(where, _line_at(node, *loc), f"{'.'.join(map(str, loc))}: {err['msg']}")
                )
    defined = {f.get("name") for f in features if isinstance(f, dict)}
    for i, key in enumerate(data["keys"]):
        if not isinstance(key, dict) or not isinstance(key.get("features"), list):
            continue
        for name in key["features"]:
            if name not in defined:
                out.append(
                    Finding(
                        where,
                        _line_at(node, "keys", i, "features"),
                        f"key {key.get('name', key.get('id', '?'))!r} may tag feature "
                        f"{name!r}, which has no entry under features (no max_tokens_cap)",
                    )
                )
    return out


def lint_file(path: Path) -> tuple[bool, list[Finding]]:
    """(whether the file held anything lintable, its findings)."""
    checked = False
    findings: list[Finding] = []
    for node, data in _documents(path):
        if not isinstance(data, dict):
            continue
        # Feature/agent configs first: an agent config may name a `model` and look like a profile.
        if _is_feature_config(data):
            checked = True
            findings += lint_feature_config(path, node, data)
        elif _is_profile(data):
            checked = True
            findings += lint_profile(path, node, data)
    return checked, findings


def lint_paths(paths: Iterable[str]) -> tuple[int, list[Finding]]:
    """(number of files with a profile or feature config, all findings). Raises LintError."""
    checked = 0
    findings: list[Finding] = []
    for path in expand_paths(paths):
        was_checked, found = lint_file(path)
        checked += was_checked
        findings += found
    return checked, findings
