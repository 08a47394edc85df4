#!/usr/bin/env python3
"""Opens N walls (Server-Sent Events streams) on a classpulse serving walls and reports the
server's resident memory before and with them, and the records they received.

Usage: scripts/walls_load.py HOST PORT N [SECONDS]
The walls are spread over studio-0001 to studio-0020 (the simulator's ids); the server must
serve walls without a token (the embedded default on a loopback address)."""
import asyncio
import re
import sys
import urllib.request

host, port, walls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
received = 0


def metric(name):
    """The sum of every series of `name`."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics").read().decode()
    found = re.findall(r"^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
    return sum(float(value) for value in found)


async def wall(number):
    global received
    reader, writer = await asyncio.open_connection(host, port)
    studio = "studio-%04d" % (number % 20 + 1)
    writer.write(f"GET /studios/{studio}/live HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        received += chunk.count(b"\ndata: ")


async def main():
    before = metric("classpulse_process_resident_memory_bytes")
    cpu_before = metric("classpulse_process_cpu_seconds_total")
    tasks = [asyncio.create_task(wall(n)) for n in range(walls)]
    await asyncio.sleep(seconds)
    during = metric("classpulse_process_resident_memory_bytes")
    cpu = metric("classpulse_process_cpu_seconds_total") - cpu_before
    print(
        f"walls {metric('classpulse_screens_clients'):.0f}, resident memory {before / 1e6:.1f} MB"
        f" before, {during / 1e6:.1f} MB with them; {received} records received in {seconds:.0f} s;"
        f" server CPU {cpu / seconds:.2f} cores; walls cut"
        f" {metric('classpulse_screens_clients_cut_total')}"
    )
    for task in tasks:
        task.cancel()


asyncio.run(main())
