"""``cds-daemon worklist list|show|decide`` and ``cds-daemon user add|disable|list``.

For operators and scripts; decisions go through the same :class:`ReviewService` as the web
page, and the running daemon's egress sends the verified SR at its next outbox poll.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import ReviewDecision, UserRole, WorklistStatus
from cds_daemon.ops.logs import configure_logging
from cds_daemon.store import Store, User, WorklistItem

EXIT_OK = 0
EXIT_FAILED = 1


def open_store(settings: Settings) -> Store | None:
    from cds_daemon.store import StoreUnavailable

    db = settings.storage.database
    if isinstance(db, Path) and not db.exists():
        print(f"no database at {db}: the daemon has not run with this data directory", file=sys.stderr)
        return None
    try:
        return Store(db)
    except StoreUnavailable as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return None


def _item_dict(store: Store, item: WorklistItem) -> dict[str, Any]:
    from cds_daemon.review.jobs import age_text

    out = asdict(item)
    out["images"] = list(item.images)
    out["decided"] = list(item.decided)
    out["reasons"] = list(item.reasons)
    out["age"] = age_text(item.created_at)
    return out


def _cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        status = None if args.status == "active" else args.status
        items = [_item_dict(store, i) for i in store.worklist(status, limit=args.limit)]
        counts = store.worklist_counts()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"counts": counts, "items": items}, indent=2))
        return EXIT_OK
    print("worklist: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not items:
        print("no items")
        return EXIT_OK
    print(
        f"{'ID':>5}  {'PRI':>3}  {'STATUS':<10} {'WAITING':<14} {'IMAGES':>6}  {'ASSIGNEE':<12} {'ACCESSION':<16}"
        " REASONS"
    )
    for i in items:
        images = f"{len(i['decided'])}/{len(i['images'])}"
        print(
            f"{i['id']:>5}  {i['priority']:>3}  {i['status']:<10} {i['age']:<14} {images:>6}  "
            f"{i['assignee'] or '-':<12} {i['accession_number'] or '-':<16} {', '.join(i['reasons'])}"
        )
    return EXIT_OK


def _cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.review.service import ReviewError, ReviewService

    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        review = ReviewService(settings, store)
        item = store.worklist_get(args.item)
        if item is None:
            print(f"cds-daemon: no worklist item {args.item}", file=sys.stderr)
            return EXIT_FAILED
        report = _item_dict(store, item)
        report["image_details"] = []
        for uid in item.images:
            try:
                r = review.ai_result(uid)
                ai: dict[str, Any] = {
                    "predicted": r.predicted,
                    "probabilities": dict(zip(r.classes, r.probabilities, strict=True)),
                    "conformal_set": list(r.conformal_set),
                    "reasons": list(r.reason_texts) or list(r.reasons),
                    "model": f"{r.model_name} {r.model_version}",
                }
            except ReviewError as exc:
                ai = {"error": str(exc)}
            decisions = [asdict(d) for d in store.decisions(item.id) if d.sop_instance_uid == uid]
            report["image_details"].append({"sop_instance_uid": uid, **ai, "decisions": decisions})
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(
        f"item {report['id']}  priority {report['priority']}  {report['status']}  waiting {report['age']}"
        f"  assignee {report['assignee'] or '-'}  accession {report['accession_number'] or '-'}"
    )
    for n, img in enumerate(report["image_details"], start=1):
        print(f"image {n}: {img['sop_instance_uid']}")
        if "error" in img:
            print(f"  {img['error']}")
            continue
        probs = ", ".join(f"{k} {v:.3f}" for k, v in img["probabilities"].items())
        print(f"  AI: {img['predicted']} ({probs}); conformal set {{{', '.join(img['conformal_set'])}}}")
        print(f"  model: {img['model']}")
        for reason in img["reasons"]:
            print(f"  flagged: {reason}")
        for d in img["decisions"]:
            note = f" - {d['comment']}" if d["comment"] else ""
            print(f"  decision: {d['decision']} {d['final_class'] or ''} by {d['reviewer']} at {d['decided_at']}{note}")
    return EXIT_OK


def log_to_stderr(settings: Settings) -> None:
    """JSON log lines on stderr, so that standard output stays the command's result (e.g. --json)."""
    configure_logging(settings.log_level, stream=sys.stderr)


def proven_user(store: Store, name: str, args: argparse.Namespace) -> User | None:
    """The active user ``name``, proven by their password (``--password-stdin`` or a prompt) or a token from
    ``user token`` (``--token`` or $CDS_REVIEW_TOKEN); None, and why on stderr, otherwise."""
    from cds_daemon.review.auth import authenticate, token_user

    token = args.token or os.environ.get("CDS_REVIEW_TOKEN")
    if token:
        user = token_user(store, token)
        if user is None or user.username != name:
            print(f"cds-daemon: the token is not {name}'s, or has expired", file=sys.stderr)
            return None
        return user
    password = _read_password(args, confirm=False, prompt=f"{name}'s password: ")
    if password is None:
        return None
    user = authenticate(store, name, password)
    if user is None:
        print(f"cds-daemon: {name} is not an active user, or the password is wrong", file=sys.stderr)
    return user


def _reviewer(store: Store, args: argparse.Namespace) -> str | None:
    user = proven_user(store, args.reviewer, args)
    return None if user is None else user.username


def _cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.review.service import ReviewError, ReviewService

    log_to_stderr(settings)
    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        reviewer = _reviewer(store, args)
        if reviewer is None:
            store.audit(f"cli:{getpass.getuser()}", "cli:decide-refused", None, worklist_id=args.item)
            return EXIT_FAILED
        made = ReviewService(settings, store).decide(
            args.item,
            args.decision,
            reviewer,
            images=args.image,
            final_class=args.final_class,
            comment=args.comment,
            actor=f"cli:{getpass.getuser()}",
            fields_viewed=args.field or (),
            diagnostic_field=args.diagnostic_field,
        )
    except ReviewError as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    if args.json:
        print(json.dumps([asdict(d) for d in made], indent=2))
    else:
        for d in made:
            print(f"{d.decision} {d.final_class or ''} for {d.sop_instance_uid}: verified SR {d.review_sr_uid} queued")
    return EXIT_OK


def _read_password(args: argparse.Namespace, *, confirm: bool = True, prompt: str = "password: ") -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        print("cds-daemon: no terminal to ask for the password: use --password-stdin", file=sys.stderr)
        return None
    first = getpass.getpass(prompt)
    if not confirm:
        return first
    if getpass.getpass("again: ") != first:
        print("cds-daemon: the passwords differ", file=sys.stderr)
        return None
    return first


def _cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.review.auth import AuthError, add_user

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    password = _read_password(args)
    if password is None:
        return EXIT_FAILED
    store = Store(settings.storage.database)
    try:
        add_user(store, args.username, password, args.role, args.full_name, actor=f"cli:{getpass.getuser()}")
    except AuthError as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    print(f"user {args.username} ({args.role}) saved")
    return EXIT_OK


def _cmd_user_token(settings: Settings, args: argparse.Namespace) -> int:
    """A token for ``worklist decide --token``: the reviewer proves who they are once, by password."""
    from cds_daemon.review.auth import authenticate, issue_token

    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        password = _read_password(args, confirm=False, prompt=f"{args.username}'s password: ")
        user = None if password is None else authenticate(store, args.username, password)
        if user is None:
            print(f"cds-daemon: {args.username} is not an active user, or the password is wrong", file=sys.stderr)
            return EXIT_FAILED
        token = issue_token(store, user, args.hours, actor=f"cli:{getpass.getuser()}")
    finally:
        store.close()
    print(token)
    return EXIT_OK


def _cmd_user_disable(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        if store.get_user(args.username) is None:
            print(f"cds-daemon: no user {args.username}", file=sys.stderr)
            return EXIT_FAILED
        store.disable_user(args.username, actor=f"cli:{getpass.getuser()}")
    finally:
        store.close()
    print(f"user {args.username} disabled; their web sessions end at their next request")
    return EXIT_OK


def _cmd_user_list(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    if store is None:
        return EXIT_FAILED
    try:
        users = [
            {
                "username": u.username,
                "role": u.role,
                "full_name": u.full_name,
                "created_at": u.created_at,
                "disabled": u.disabled,
            }
            for u in store.users()
        ]
    finally:
        store.close()
    if args.json:
        print(json.dumps(users, indent=2))
    else:
        for u in users:
            state = "disabled" if u["disabled"] else "active"
            print(f"{u['username']:<20} {u['role']:<9} {state:<9} {u['full_name']}")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register the ``worklist`` and ``user`` command groups on the main parser's subparsers."""

    wl = sub.add_parser("worklist", help="the expert-review worklist: list, show, decide")
    wl_sub = wl.add_subparsers(dest="worklist_command", required=True)
    ls = wl_sub.add_parser("list", help="items waiting for review, most urgent first")
    ls.add_argument("--status", choices=["active", *WorklistStatus], default="active")
    ls.add_argument("--limit", type=int, default=500)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)
    show = wl_sub.add_parser("show", help="one item: its images, AI results and decisions")
    show.add_argument("item", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_show)
    decide = wl_sub.add_parser("decide", help="record a reviewer's decision; a verified SR goes to the PACS")
    decide.add_argument("--item", type=int, required=True)
    decide.add_argument("--image", action="append", help="source SOPInstanceUID (repeatable; default: undecided)")
    decide.add_argument("--decision", choices=list(ReviewDecision), required=True)
    decide.add_argument("--class", dest="final_class", help="the reviewer's class for --decision change")
    decide.add_argument("--comment")
    decide.add_argument(
        "--field", type=int, action="append", help="a whole slide's field the reviewer examined (number, repeatable)"
    )
    decide.add_argument("--diagnostic-field", type=int, help="the slide's field the reviewer marks as diagnostic")
    decide.add_argument("--reviewer", required=True, help="an existing, active user name")
    decide.add_argument("--token", help="from 'user token' (or $CDS_REVIEW_TOKEN); else the password is asked")
    decide.add_argument("--password-stdin", action="store_true", help="read the reviewer's password from stdin")
    decide.add_argument("--json", action="store_true")
    decide.set_defaults(func=_cmd_decide)

    user = sub.add_parser("user", help="review web page accounts: add, disable, list")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a user or reset an existing one's password and role")
    add.add_argument("username")
    add.add_argument("--role", choices=list(UserRole), default=UserRole.REVIEWER)
    add.add_argument(
        "--full-name", default="", help='"Family, Given": shown in the page and as verifying observer in the SR'
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=_cmd_user_add)
    token = user_sub.add_parser("token", help="a token for 'worklist decide --token', after the user's password")
    token.add_argument("username")
    token.add_argument("--hours", type=float, default=12.0, help="valid this long (default: %(default)s)")
    token.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    token.set_defaults(func=_cmd_user_token)
    disable = user_sub.add_parser("disable", help="stop a user from signing in")
    disable.add_argument("username")
    disable.set_defaults(func=_cmd_user_disable)
    lst = user_sub.add_parser("list", help="every user and role")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_user_list)
