"""`ionm users`: console accounts (argon2-hashed passwords, roles technologist / physician / read-only).

    ionm users add NAME --role physician [--db PATH]     asks for the password (or --password-stdin)
    ionm users list | passwd NAME | role NAME ROLE | disable NAME

Whoever can run this can write the store file, so this is the administrator's tool: every change is in the
audit trail under the operating-system user who made it.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from ionm.cli.common import add_db_argument, fail

HELP = "console user accounts: add, list, passwd, role, disable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    a = sub.add_parser("add", help="add an account")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=("technologist", "physician", "read-only"))
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sub.add_parser("list", help="list accounts")
    pw = sub.add_parser("passwd", help="set a new password (ends the user's sessions)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    r = sub.add_parser("role", help="change a role")
    r.add_argument("name")
    r.add_argument("role", choices=("technologist", "physician", "read-only"))
    d = sub.add_parser("disable", help="disable an account (ends its sessions)")
    d.add_argument("name")
    for s in (a, pw, r, d, sub.choices["list"]):
        add_db_argument(s)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password for %s: " % args.name)
    if pw != getpass.getpass("again: "):
        raise SystemExit("ionm users: the passwords differ")
    return pw


def run(args: argparse.Namespace) -> int:
    from ionm.case.store import CaseStore
    from ionm.console.auth import Accounts, AuthError

    store = CaseStore(args.db)
    accounts = Accounts(store)
    by = "admin:" + getpass.getuser()
    try:
        if args.action == "add":
            accounts.add(args.name, args.role, _password(args), by=by)
            print("ionm users: added %s (%s)" % (args.name, args.role))
        elif args.action == "list":
            for u in accounts.list():
                print("%-20s %-13s%s" % (u["name"], u["role"], "  disabled" if u["disabled"] else ""))
        elif args.action == "passwd":
            accounts.set_password(args.name, _password(args), by=by)
            print("ionm users: password of %s changed" % args.name)
        elif args.action == "role":
            accounts.set_role(args.name, args.role, by=by)
            print("ionm users: %s is now %s" % (args.name, args.role))
        elif args.action == "disable":
            accounts.disable(args.name, by=by)
            print("ionm users: %s disabled" % args.name)
    except AuthError as exc:
        return fail("users", 2, "%s" % exc)
    finally:
        store.close()
    return 0

