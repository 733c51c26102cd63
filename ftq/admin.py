"""`ftq keys ...` and `ftq users ...`: the admin's commands, run on the server against its database."""

import argparse
import json
from collections.abc import Callable
from typing import Any

from shared.settings import apply_data_dir

AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key for a user (made if new) and print it once."""
    from shared.auth import create_api_key
    from shared.db import session_scope
    from shared.errors import FtqError

    apply_data_dir(getattr(args, "data_dir", None))
    with session_scope() as session:
        try:
            key, raw = create_api_key(session=session, name=args.name, is_admin=args.admin)
        except FtqError as exc:
            print(f"ftq keys create: {exc.message}")
            return 1
        session.commit()
        admin = "  (admin)" if key.user.is_admin else ""
    print(f"{key.id}  {key.prefix}  user {args.name}{admin}\n{raw}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List every key: id, prefix, user, created and whether revoked (never the key itself)."""
    from shared.auth import list_api_keys
    from shared.db import session_scope

    apply_data_dir(getattr(args, "data_dir", None))
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "id": key.id,
                "prefix": key.prefix,
                "user": key.user.name,
                "admin": key.user.is_admin,
                "created_at": key.created_at.isoformat(),
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in list_api_keys(session=session)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':<30} {'PREFIX':<11} {'USER':<20} {'CREATED':<20} STATE")
    for row in rows:
        state = "revoked" if row["revoked_at"] else ("admin" if row["admin"] else "active")
        print(f"{row['id']:<30} {row['prefix']:<11} {row['user']:<20} {row['created_at'][:19]:<20} {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id or prefix; requests with it get 401 from then on (the polled reads within the API's
    `FTQ_KEY_CACHE_TTL`)."""
    from shared.auth import revoke_api_key
    from shared.db import session_scope
    from shared.errors import FtqError

    apply_data_dir(getattr(args, "data_dir", None))
    with session_scope() as session:
        try:
            key = revoke_api_key(session=session, ref=args.key)
        except FtqError as exc:
            print(f"ftq keys revoke: {exc.message}")
            return 1
        session.commit()
        print(f"revoked {key.id} ({key.prefix}, user {key.user.name})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    """List users with their admin flag, priority and limits."""
    from shared.db import session_scope
    from shared.users import list_users

    apply_data_dir(getattr(args, "data_dir", None))
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {"id": u.id, "name": u.name, "admin": u.is_admin, "priority": u.priority, "limits": u.limits}
            for u in list_users(session=session)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        limits = " ".join(f"{k}={v}" for k, v in sorted(row["limits"].items())) or "no limits"
        print(f"{row['name']:<20} {'admin' if row['admin'] else 'user':<6} priority {row['priority']:<5} {limits}")
    return 0


def cmd_users_set(args: argparse.Namespace) -> int:
    """Set a user's priority, admin flag or limits (`--max-running 1`; `--max-running none` lifts a cap)."""
    from pydantic import ValidationError

    from shared.db import session_scope
    from shared.errors import FtqError
    from shared.limits import UserLimits, user_limits
    from shared.users import get_user_by_name, update_user

    apply_data_dir(getattr(args, "data_dir", None))
    with session_scope() as session:
        try:
            user = get_user_by_name(session=session, name=args.name)
            changes = dict(args.limit or [])
            limits = UserLimits.model_validate({**user_limits(user).model_dump(), **changes}) if changes else None
        except (FtqError, ValidationError, ValueError) as exc:
            print(f"ftq users set: {exc}")
            return 1
        admin = {"yes": True, "no": False}.get(args.admin or "")
        update_user(session=session, user=user, is_admin=admin, priority=args.priority, limits=limits)
        session.commit()
        print(f"{user.name}: admin={user.is_admin} priority={user.priority} limits={json.dumps(user.limits)}")
    return 0


def _limit(value: str) -> tuple[str, float | None]:
    name, sep, number = value.partition("=")
    from shared.limits import UserLimits

    if not sep or name not in UserLimits.model_fields:
        raise argparse.ArgumentTypeError(f"NAME=VALUE with NAME one of {', '.join(UserLimits.model_fields)}")
    if number == "none":
        return name, None
    try:
        return name, float(number) if "." in number else int(number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name} takes a number or none (got {number!r})") from exc


def add_admin_commands(add: AddCommand) -> None:
    """Add `keys` and `users` with their subcommands."""
    keys = add("keys", lambda _a: 2, "Manage API keys (on the server).")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    def sub(parent: Any, name: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=func.__doc__, description=func.__doc__)
        parser.add_argument("--data-dir", help="data directory")
        parser.set_defaults(func=func)
        return parser

    create = sub(keys_sub, "create", cmd_keys_create)
    create.add_argument("name", help="the user the key is for (made if new)")
    create.add_argument("--admin", action="store_true", help="make the user an admin")
    sub(keys_sub, "list", cmd_keys_list).add_argument("--json", action="store_true")
    sub(keys_sub, "revoke", cmd_keys_revoke).add_argument("key", help="key id or prefix, as `ftq keys list` shows")
    users = add("users", lambda _a: 2, "Manage users' priority and limits (on the server).")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    sub(users_sub, "list", cmd_users_list).add_argument("--json", action="store_true")
    user_set = sub(users_sub, "set", cmd_users_set)
    user_set.add_argument("name")
    user_set.add_argument("--priority", type=int)
    user_set.add_argument("--admin", choices=["yes", "no"])
    user_set.add_argument(
        "--limit", type=_limit, action="append", metavar="NAME=VALUE", help="e.g. max_running=1, max_steps=none"
    )
