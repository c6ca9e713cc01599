"""`gpuledger` subcommands of the control plane.

Server and database: `control-plane`, `db upgrade|downgrade`. Admin chores go through the REST API
(httpx), configured by GPULEDGER_CONTROL_PLANE_URL (default http://127.0.0.1:8090) and
GPULEDGER_ADMIN_TOKEN: `keys create|list|rotate|revoke`, `features create|list`,
`budgets set|list`, `spend`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("control-plane", help="run the control plane (applies migrations first)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_serve)

    dbp = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    up = dbp.add_parser("upgrade", help="migrate up (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_migrate, action="upgrade")
    down = dbp.add_parser("downgrade", help="migrate down to REV (e.g. base)")
    down.add_argument("revision")
    down.set_defaults(func=_migrate, action="downgrade")

    keys = sub.add_parser("keys", help="API keys (admin API)").add_subparsers(
        dest="keys_command", required=True
    )
    kc = keys.add_parser("create", help="create a key; prints the secret once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--feature", action="append", required=True, help="repeat; first is default")
    kc.add_argument("--owner", default="")
    kc.add_argument("--model", action="append", help="allowed model (repeat); default all")
    kc.set_defaults(func=_keys_create)
    keys.add_parser("list").set_defaults(func=_simple, method="GET", path="/api/v1/keys")
    for verb in ("rotate", "revoke"):
        kp = keys.add_parser(verb)
        kp.add_argument("key_id")
        kp.set_defaults(func=_key_action, verb=verb)

    feats = sub.add_parser("features", help="features (admin API)").add_subparsers(
        dest="features_command", required=True
    )
    fc = feats.add_parser("create")
    fc.add_argument("name")
    fc.add_argument("--owner", default="")
    fc.add_argument("--default-max-tokens", type=int, default=256)
    fc.add_argument("--max-tokens-cap", type=int, default=1024)
    fc.add_argument("--over-cap", choices=["reject", "clamp"], default="reject")
    fc.add_argument("--priority", type=int, default=0)
    fc.set_defaults(func=_features_create)
    feats.add_parser("list").set_defaults(func=_simple, method="GET", path="/api/v1/features")

    budgets = sub.add_parser("budgets", help="GPU-hour budgets (admin API)").add_subparsers(
        dest="budgets_command", required=True
    )
    bs = budgets.add_parser("set", help="create or replace a feature's budget")
    bs.add_argument("--feature", required=True)
    bs.add_argument("--period", choices=["day", "week", "month", "rolling"], default="month")
    bs.add_argument("--rolling-hours", type=int)
    bs.add_argument("--gpu-hours", type=float, required=True)
    bs.add_argument("--soft-pct", type=float, default=80.0)
    bs.add_argument("--hard-action", choices=["reject", "escalate", "alert_only"], default="reject")
    bs.set_defaults(func=_budgets_set)
    budgets.add_parser("list").set_defaults(func=_simple, method="GET", path="/api/v1/budgets")

    sp = sub.add_parser("spend", help="budget spend this period, per feature")
    sp.add_argument("--feature")
    sp.add_argument("--json", action="store_true", help="print the raw JSON")
    sp.set_defaults(func=_spend)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.app import create_app
    from control_plane.settings import Settings

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import asyncio

    from control_plane import db
    from control_plane.settings import Settings

    async def run() -> str | None:
        engine = db.create_engine(Settings().database_url)
        try:
            await db.migrate(engine, args.action, args.revision)
            return await db.current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database at revision {asyncio.run(run()) or 'base'}")
    return 0


def _request(method: str, path: str, body: Any = None) -> Any:
    import httpx

    from gpuledger.cli import CliError

    base = os.environ.get("GPULEDGER_CONTROL_PLANE_URL", "http://127.0.0.1:8090").rstrip("/")
    token = os.environ.get("GPULEDGER_ADMIN_TOKEN", "")
    if not token:
        raise CliError("set GPULEDGER_ADMIN_TOKEN to an admin token")
    try:
        resp = httpx.request(
            method,
            base + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise CliError(f"control plane at {base} unreachable: {exc.__class__.__name__}") from exc
    if resp.status_code >= 400:
        try:
            err = resp.json()
            detail = err.get("detail")
            message = detail if isinstance(detail, str) else json.dumps(detail)
            raise CliError(f"{resp.status_code} {err.get('code', '')}: {message}")
        except ValueError:
            raise CliError(f"{resp.status_code}: {resp.text[:200]}") from None
    return resp.json() if resp.content else None


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _simple(args: argparse.Namespace) -> int:
    _print(_request(args.method, args.path))
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "owner": args.owner, "features": args.feature}
    if args.model:
        body["models"] = args.model
    key = _request("POST", "/api/v1/keys", body)
    print(f"key id: {key['id']}\nsecret: {key['secret']}\n(the secret is not shown again)")
    return 0


def _key_action(args: argparse.Namespace) -> int:
    key = _request("POST", f"/api/v1/keys/{args.key_id}/{args.verb}")
    if "secret" in key:
        print(f"key id: {key['id']}\nsecret: {key['secret']}\n(the secret is not shown again)")
    else:
        print(f"key {key['id']} revoked")
    return 0


def _features_create(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "owner": args.owner,
        "default_max_tokens": args.default_max_tokens,
        "max_tokens_cap": args.max_tokens_cap,
        "over_cap": args.over_cap,
        "priority": args.priority,
    }
    _print(_request("POST", "/api/v1/features", body))
    return 0


def _budgets_set(args: argparse.Namespace) -> int:
    body = {
        "period": args.period,
        "rolling_hours": args.rolling_hours,
        "gpu_hours": args.gpu_hours,
        "soft_threshold_pct": args.soft_pct,
        "hard_action": args.hard_action,
    }
    _print(_request("PUT", f"/api/v1/budgets/{args.feature}", body))
    return 0


def _spend(args: argparse.Namespace) -> int:
    path = f"/api/v1/budgets/{args.feature}" if args.feature else "/api/v1/budgets"
    data = _request("GET", path)
    budgets = [data] if args.feature else data
    if args.json:
        _print(budgets)
        return 0
    print(f"{'feature':<24} {'period':<8} {'used h':>9} {'limit h':>9} {'used':>7}  status")
    for b in budgets:
        print(
            f"{b['feature']:<24} {b['period']:<8} {b['used_gpu_seconds'] / 3600:>9.3f} "
            f"{b['limit_gpu_hours']:>9.3f} {100 * b['used_ratio']:>6.1f}%  {b['status']}"
        )
    return 0
