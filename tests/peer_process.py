"""A real aiortc client in its own process, for tests that kill it or let it flood:

    python tests/peer_process.py BASE_URL

It streams a DAVIS clip to BASE_URL's /offer and prints {"event": "streaming",
"session_id", "close_url", "close_secret"} to stdout once frames come back. Lines on stdin steer it: "flood RATE"
sends RATE control messages a second (distinct set_prompt messages mixed with garbage),
"calm" stops that. Runs until killed or stdin closes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for bench/

from aiohttp import ClientSession
from media import ClipTrack, LoopbackClient, davis_clip, ping_pong

GARBAGE = ["{not json", '{"v":1,"type":"warp"}', '{"v":9,"type":"ping","t":1}', '{"v":1,"type":"ping","t":"x"}']
# aiortc's send queue is kept short, so a "calm" is calm at once; the wire paces the flood.
MAX_BUFFERED = 32 * 1024


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def flood(client: LoopbackClient, rate: float) -> None:
    sent = 0
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) * rate)
        while sent < due and client.channel.bufferedAmount < MAX_BUFFERED:
            if sent % 2:
                client.channel.send(GARBAGE[sent % len(GARBAGE)])
            else:
                client.send(type="set_prompt", prompt=f"flood style number {sent}", seq=sent)
            sent += 1
        if sent < due:  # the wire is behind: do not owe the backlog later
            start = time.monotonic() - sent / rate
        await asyncio.sleep(0.002)


async def steer(client: LoopbackClient) -> None:
    loop = asyncio.get_running_loop()
    flooding: asyncio.Task[None] | None = None
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if flooding is not None:
            flooding.cancel()
            flooding = None
        if line[0] == "flood":
            flooding = asyncio.create_task(flood(client, float(line[1])))
        emit(event=line[0])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    args = parser.parse_args()
    track = ClipTrack(ping_pong(davis_clip("blackswan")), fps=30)
    async with ClientSession() as http:
        client = LoopbackClient(args.base_url, track)
        await client.connect(http)
        await client.wait_frames(5, timeout=30)
        answer = client.answer
        emit(
            event="streaming",
            session_id=answer["session_id"],
            close_url=answer["close_url"],
            close_secret=answer["close_secret"],
        )
        await steer(client)


if __name__ == "__main__":
    asyncio.run(main())
