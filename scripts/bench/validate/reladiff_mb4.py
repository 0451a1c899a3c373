#!/usr/bin/env python3
"""reladiff 0.6.0's command line, with three fixes; the arguments are reladiff's own:

    python reladiff_mb4.py mysql://… TABLE postgresql://… TABLE -k id -c '%' -j 4 --json --skip-sort-results

1. MySQL connections use utf8mb4 / utf8mb4_general_ci. sqeleton 0.1.7's MySQL.create_connection hard-codes
   charset="utf8" (= utf8mb3): 4-byte characters come back as '?', so every row holding one is reported as
   different.
2. Every pooled connection is set to UTC (MySQL time_zone='+00:00', PostgreSQL TIME ZONE 'UTC'). reladiff's
   Connect_SetUTC runs its SET once, on whichever pool thread picks it up: with -j N the other N-1 connections keep
   the server's zone, and TIMESTAMP / timestamptz text differs when that zone is not UTC.
3. --json lines are written as they are: rich.print wraps them at 80 columns when stdout is not a terminal and
   reads '[...]' inside values as markup.
Output, with --json: one line per row version, json.dumps([sign, [key…, other columns…]]), "-" = the row of
table 1 (MySQL), "+" = table 2 (PostgreSQL); a changed row gives both. The process exits 0 whatever it finds.
"""
import re
import sys

import rich
from sqeleton.databases import mysql as sq_mysql
from sqeleton.databases import postgresql as sq_pg
from sqeleton.databases.base import ConnectError


def create_connection(self):
    mysql = sq_mysql.import_mysql()
    try:
        conn = mysql.connect(charset="utf8mb4", collation="utf8mb4_general_ci", use_unicode=True, **self._args)
    except mysql.Error as e:
        raise ConnectError(*e.args) from e
    cur = conn.cursor()
    cur.execute("SET time_zone='+00:00'")
    cur.close()
    return conn


sq_mysql.MySQL.create_connection = create_connection
# sqeleton's PostgreSQL.create_connection runs SET TIME ZONE on every new connection when this is set
sq_pg.SESSION_TIME_ZONE = "UTC"

_MARKUP = re.compile(r"^\[(green|red)\](.*)\[/\1\]$", re.S)


def _plain_print(*objs, **_kw):
    s = " ".join(str(o) for o in objs)
    m = _MARKUP.match(s)
    sys.stdout.write((m.group(2) if m else s) + "\n")


rich.print = _plain_print

from reladiff.__main__ import main  # noqa: E402  (after the patches: it binds rich.print at call time)

if __name__ == "__main__":
    main()
