"""Who is calling, and under which feature: `Authorization: Bearer <key>` and `X-Feature`.

Errors name the key by id at most, never its secret.
"""

from __future__ import annotations

from gpuledger.contracts import FeaturePolicy, KeyPolicy
from sidecar.errors import AuthenticationFailed, PermissionDenied
from sidecar.policy import Policy, key_usable


def authenticate(policy: Policy, authorization: str | None) -> KeyPolicy:
    """The key presented in the Authorization header, or AuthenticationFailed / PermissionDenied."""
    if not authorization:
        raise AuthenticationFailed("Missing API key: send `Authorization: Bearer <key>`.")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationFailed("Malformed Authorization header: expected `Bearer <key>`.")
    key = policy.key_for_secret(secret)
    if key is None:
        raise AuthenticationFailed("Invalid API key.")
    reason = key_usable(key)
    if reason == "key_expired":
        raise AuthenticationFailed(f"API key {key.id} has expired.", code=reason)
    if reason is not None:
        raise PermissionDenied(f"API key {key.id} is disabled.", code=reason)
    return key


def resolve_feature(policy: Policy, key: KeyPolicy, requested: str | None) -> FeaturePolicy:
    """The feature to bill: `X-Feature` if the key may use it, else the key's default."""
    name = requested.strip() if requested else key.default_feature
    if name not in key.features and name != key.default_feature:
        raise PermissionDenied(
            f"Key {key.id} may not use feature {name!r}.",
            code="feature_not_allowed",
            param="X-Feature",
        )
    feature = policy.features.get(name)
    if feature is None:
        # Allowed by the key but not defined: the policy is incomplete; be safe, use the defaults.
        feature = FeaturePolicy(name=name)
    return feature


def check_model(key: KeyPolicy, model: str) -> None:
    if "*" in key.models or model in key.models:
        return
    raise PermissionDenied(
        f"Key {key.id} may not use model {model!r}.", code="model_not_allowed", param="model"
    )


def model_allowed(key: KeyPolicy, model: str) -> bool:
    return "*" in key.models or model in key.models
