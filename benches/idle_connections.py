"""Server memory per idle WebSocket connection.

Usage: python3 benches/idle_connections.py BASE_URL CONNECTIONS SERVER_PID
The server must let one user hold them all and create the conversations:
start it with WS_MAX_PER_USER=0 MAX_NEW_CONVERSATIONS=0 (otherwise it closes every
socket past the 32nd, and the script says so instead of printing a figure).
Opens CONNECTIONS WebSockets (50 per conversation) against a running server and
prints the growth of the server's resident memory, before vs after, in one run, and
the growth of the kernel's slab memory (sockets, their inodes and file structures),
halved since both ends of each loopback connection live on this machine: the
kernel's share of one idle socket.
Needs the `websockets` package.
"""

import asyncio
import json
import os
import sys
import urllib.request

import websockets

PER_CONVERSATION = 50


def post(base, path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers)
    return json.loads(urllib.request.urlopen(request).read())


def slab_kib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise RuntimeError("no Slab")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def main(base, count, pid):
    name = f"idle{os.getpid()}"
    post(base, "/api/auth/register", {"username": name, "password": "password123"})
    token = post(base, "/api/auth/login", {"username": name, "password": "password123"})["access_token"]
    conversations = [
        post(base, "/api/chat/conversations", {"name": "idle", "is_group": True}, token)["id"]
        for _ in range(max(1, count // PER_CONVERSATION))
    ]
    ws_base = base.replace("http", "ws", 1)
    uris = [f"{ws_base}/api/chat/ws/{c}?token={token}" for c in conversations]
    # One connection first, so lazily allocated server state is in the baseline.
    first = await websockets.connect(uris[0])
    await first.recv()
    await first.close()
    await asyncio.sleep(1)
    before = rss_kib(pid)
    slab_before = slab_kib()
    connections = [await websockets.connect(uris[i % len(uris)], max_queue=None) for i in range(count)]
    await asyncio.sleep(2)
    closed = sum(1 for c in connections if c.close_code is not None)
    if closed:
        raise SystemExit(f"{closed} of {count} connections were closed by the server "
                         "(start it with WS_MAX_PER_USER=0 MAX_NEW_CONVERSATIONS=0)")
    after = rss_kib(pid)
    slab_after = slab_kib()
    per = (after - before) * 1024 / count
    kernel = (slab_after - slab_before) * 1024 / (2 * count)
    print(f"{count} idle connections: RSS {before} KiB -> {after} KiB, {per:.0f} bytes per connection")
    print(f"kernel slab {slab_before} KiB -> {slab_after} KiB, {kernel:.0f} bytes per socket")
    for connection in connections:
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
