"""The conversation list with unread counts, at scale: a user in 500 conversations
over a store of millions of messages.

Usage: python3 benches/inbox.py SERVER_BIN {postgres|sqlite} [MESSAGES] [REQUESTS]

Starts SERVER_BIN on a scratch store (a fresh PostgreSQL database `bench_inbox` on
127.0.0.1:5432, or an embedded SQLite store in a temporary directory), makes one user
a member of 500 conversations over REST, loads MESSAGES (default 10,000,000) messages
from another member into them straight into the store (the REST path would take
hours), then times REQUESTS (default 200) reads of each page of
`GET /api/chat/conversations?limit=100` in two states of the user's read markers:

- "a few unread": every marker 5 messages behind its conversation's end;
- "all unread": every marker at 0, so each count stops at its cap (1,000).

Prints p50, p99 and max per state, in milliseconds, and the store's size. The count
walks the messages after the marker on the (conversation_id, seq) index and stops at
the cap, so its cost follows the unread messages (at most the cap), not the history.
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

CONVERSATIONS = 500
PAGE = 100
PASSWORD = "benchmark-password-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, path, body=None, token=None, method=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null"), response.headers


def psql(sql, database="bench_inbox"):
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
    )


def start(binary, store, workdir):
    port = free_port()
    env = dict(os.environ)
    env.update(
        LISTEN_ADDR=f"127.0.0.1:{port}",
        DATA_DIR=workdir,
        MAX_NEW_CONVERSATIONS="0",
        RUST_LOG="warn",
        SECRET_KEY="benchmark-secret-key-0123456789abcdef",
    )
    if store == "postgres":
        psql("DROP DATABASE IF EXISTS bench_inbox", database="postgres")
        psql("CREATE DATABASE bench_inbox", database="postgres")
        env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/bench_inbox"
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            call(base, "/health")
            return server, base
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not start")


def user(base, name):
    call(base, "/api/auth/register", {"username": name, "password": PASSWORD})
    login, _ = call(base, "/api/auth/login", {"username": name, "password": PASSWORD})
    return login["user_id"], login["access_token"]


def load_postgres(reader, sender, messages):
    per = messages // CONVERSATIONS
    psql(
        f"""
        INSERT INTO messages (id, conversation_id, sender_id, content, created_at, updated_at, seq)
        SELECT gen_random_uuid(), p.conversation_id, '{sender}', 'message ' || s || ' of the load',
               now(), now(), s
        FROM participants AS p, generate_series(1, {per}) AS s
        WHERE p.user_id = '{reader}';
        UPDATE conversations SET last_seq = {per}
        WHERE id IN (SELECT conversation_id FROM participants WHERE user_id = '{reader}');
        """
    )
    psql("VACUUM ANALYZE messages")


def load_sqlite(path, reader, sender, messages):
    per = messages // CONVERSATIONS
    db = sqlite3.connect(path, timeout=60)
    ids = [row[0] for row in db.execute("SELECT conversation_id FROM participants WHERE user_id = ?", (reader,))]
    now = int(time.time() * 1_000_000)
    with db:
        for conversation in ids:
            db.executemany(
                "INSERT INTO messages (id, conversation_id, sender_id, content, is_edited, created_at, updated_at, seq) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    (str(uuid.uuid4()), conversation, sender, f"message {s} of the load", now, now, s)
                    for s in range(1, per + 1)
                ),
            )
        db.execute(f"UPDATE conversations SET last_seq = {per} WHERE id IN (SELECT conversation_id FROM participants WHERE user_id = ?)", (reader,))
    db.execute("ANALYZE")
    db.close()


def set_markers(store, path, reader, behind):
    sql = (
        "UPDATE participants SET last_read_seq = "
        + ("0" if behind is None else f"(SELECT last_seq FROM conversations WHERE id = conversation_id) - {behind}")
        + f" WHERE user_id = '{reader}'"
    )
    if store == "postgres":
        psql(sql)
    else:
        db = sqlite3.connect(path, timeout=60)
        with db:
            db.execute(sql)
        db.close()


def time_pages(base, token, requests):
    timings = []
    counts = []
    for _ in range(requests):
        cursor = None
        while True:
            query = f"?limit={PAGE}" + (f"&cursor={urllib.request.quote(cursor)}" if cursor else "")
            started = time.perf_counter()
            page, headers = call(base, "/api/chat/conversations" + query, token=token)
            timings.append((time.perf_counter() - started) * 1000)
            counts.extend(c["unread_count"] for c in page)
            cursor = headers.get("X-Next-Cursor")
            if not cursor:
                break
    timings.sort()
    pick = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))]
    return {"pages": len(timings), "p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2),
            "max_ms": round(timings[-1], 2), "unread_counts": sorted(set(counts))}


def store_size(store, workdir):
    if store == "postgres":
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "bench_inbox", "-At", "-c",
             "SELECT pg_size_pretty(pg_database_size('bench_inbox'))"],
            check=True, capture_output=True, text=True)
        return out.stdout.strip()
    return f"{os.path.getsize(os.path.join(workdir, 'chat.db')) / 2**30:.1f} GiB"


def main():
    binary, store = sys.argv[1], sys.argv[2]
    messages = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000_000
    requests = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    workdir = tempfile.mkdtemp(prefix="bench-inbox-")
    server, base = start(binary, store, workdir)
    try:
        reader, token = user(base, "inbox_reader")
        sender, _ = user(base, "inbox_sender")
        for i in range(CONVERSATIONS):
            call(base, "/api/chat/conversations",
                 {"name": f"conversation {i}", "description": "", "is_group": True, "participant_ids": [sender]},
                 token=token)
        started = time.perf_counter()
        if store == "postgres":
            load_postgres(reader, sender, messages)
        else:
            load_sqlite(os.path.join(workdir, "chat.db"), reader, sender, messages)
        loaded = time.perf_counter() - started
        result = {"store": store, "messages": messages, "conversations": CONVERSATIONS,
                  "load_seconds": round(loaded), "size": store_size(store, workdir)}
        for state, behind in [("a few unread", 5), ("all unread", None)]:
            set_markers(store, os.path.join(workdir, "chat.db"), reader, behind)
            time_pages(base, token, 5)  # warm the caches
            result[state] = time_pages(base, token, requests)
        print(json.dumps(result, indent=1))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        if store == "postgres":
            psql("DROP DATABASE IF EXISTS bench_inbox", database="postgres")


if __name__ == "__main__":
    main()
