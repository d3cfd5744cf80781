"""Two (or more) independent WebRTC peers (aiortc, which decodes VP8 and Opus) in one Tandem call.

Each peer speaks /v1 over a WebSocket exactly as docs/protocol.md describes it: join the room, join
its call, offer its camera and microphone (aiortc's synthetic sources), subscribe to every track
the others publish (renegotiating when a track.published arrives), and count the video frames and
audio frames it decodes from each other peer. Exits 0 when every peer decoded at least
--min-frames video frames from every other peer, 1 otherwise (with a report on stdout).

    python3 aiortc_peers.py --url ws://127.0.0.1:1234/v1 --room demo --peers 2 [--token-a T --token-b T]
"""

import argparse
import asyncio
import json
import os
import sys

import aioice.ice
import websockets
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

# Loopback only: aiortc would otherwise offer every interface and reach for a public STUN server.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Peer:
    def __init__(self, name, url, room, token):
        self.name = name
        self.url = url + (f"?token={token}" if token else "")
        self.room = room
        self.n = 0
        self.replies = {}
        self.events = asyncio.Queue()
        # One transport for every m-line (BUNDLE), as browsers do; Tandem requires it.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.me = None
        self.known = {}  # track id -> info
        self.subscribed = {}  # track id -> mid
        self.by_mid = {}  # mid -> track id
        self.frames = {}  # track id -> decoded frames
        self.negotiating = asyncio.Lock()
        self.pc.on("track", self.on_track)

    async def start(self):
        self.ws = await websockets.connect(self.url, max_size=8 * 1024 * 1024)
        hello = json.loads(await self.ws.recv())
        assert hello["t"] == "hello", hello
        self.reader = asyncio.create_task(self.read())
        r = await self.request({"t": "join", "room": self.room})
        assert r["t"] == "joined", r
        r = await self.request({"t": "call.join", "room": self.room})
        assert r["t"] == "call.joined", r
        self.me = r["participant"]
        for t in r["tracks"]:
            self.known[t["id"]] = t
        self.cam = self.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        self.mic = self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await self.negotiate(publish=True)
        self.watcher = asyncio.create_task(self.watch())

    async def read(self):
        async for text in self.ws:
            m = json.loads(text)
            rid = m.get("id")
            if rid is not None and rid in self.replies:
                self.replies.pop(rid).set_result(m)
            else:
                await self.events.put(m)

    async def request(self, frame):
        self.n += 1
        frame["id"] = f"{self.name}-{self.n}"
        fut = asyncio.get_running_loop().create_future()
        self.replies[frame["id"]] = fut
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(fut, 20)

    async def negotiate(self, publish=False):
        async with self.negotiating:
            new = [t for t in self.known if t not in self.subscribed and self.known[t]["participant"] != self.me]
            if not new and not publish:
                return
            added = []
            for tid in new:
                kind = "video" if self.known[tid]["kind"] in ("camera", "screen") else "audio"
                added.append((tid, self.pc.addTransceiver(kind, direction="recvonly")))
            offer = await self.pc.createOffer()
            await self.pc.setLocalDescription(offer)
            frame = {"t": "call.offer", "room": self.room, "sdp": self.pc.localDescription.sdp}
            if publish:
                frame["publish"] = [
                    {"mid": self.cam.mid, "kind": "camera"},
                    {"mid": self.mic.mid, "kind": "microphone"},
                ]
            frame["subscribe"] = [{"mid": tr.mid, "track": tid} for tid, tr in added]
            r = await self.request(frame)
            assert r["t"] == "call.answer", r
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=r["sdp"], type="answer"))
            for tid, tr in added:
                self.subscribed[tid] = tr.mid
                self.by_mid[tr.mid] = tid

    async def watch(self):
        while True:
            m = await self.events.get()
            if m["t"] == "track.published":
                self.known[m["track"]["id"]] = m["track"]
                await self.negotiate()

    def on_track(self, track):
        async def consume():
            mid = None
            for t in self.pc.getTransceivers():
                if t.receiver.track is track:
                    mid = t.mid
            tid = self.by_mid.get(mid, f"mid-{mid}")
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                self.frames[tid] = self.frames.get(tid, 0) + 1

        asyncio.ensure_future(consume())

    async def close(self):
        try:
            r = await self.request({"t": "call.leave", "room": self.room})
            assert r["t"] == "ok", r
        finally:
            await self.pc.close()
            await self.ws.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--room", default="aiortc")
    ap.add_argument("--peers", type=int, default=2)
    ap.add_argument("--tokens", default="", help="comma-separated tokens, one per peer")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--min-frames", type=int, default=10)
    args = ap.parse_args()
    tokens = args.tokens.split(",") if args.tokens else [""] * args.peers
    peers = [Peer(f"peer{i}", args.url, args.room, tokens[i]) for i in range(args.peers)]
    for p in peers:
        await p.start()
    deadline = asyncio.get_running_loop().time() + args.seconds

    def video_counts(p):
        others = [t for t, info in p.known.items() if info["participant"] != p.me and info["kind"] == "camera"]
        return {t: p.frames.get(t, 0) for t in others}

    ok = False
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        counts = [video_counts(p) for p in peers]
        if all(len(c) == args.peers - 1 and all(v >= args.min_frames for v in c.values()) for c in counts):
            ok = True
            break
    report = {
        p.name: {"participant": p.me, "frames": p.frames, "ice": p.pc.iceConnectionState, "subscribed": p.subscribed}
        for p in peers
    }
    print(json.dumps({"ok": ok, "peers": report}))
    for p in peers:
        await p.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
