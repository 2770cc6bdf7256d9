"""A proxy on 127.0.0.1 that limits its rate, in front of a real server: what a hosted API does to a
client that sends more than it takes.

Every request beyond `max_in_flight` at once is answered at once with HTTP 429 and `Retry-After`; the
others go to the server behind it (`upstream`, its root URL) and their answers come back as they
arrive, streams included. It records the most requests it let through at once, how many it refused,
and when each request arrived, keyed by its method, path and body: a retry sends the same body (the
same seed), so the time from a refusal to the retry of that request shows how long the client waited.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time


class RateLimitedProxy:
    def __init__(self, upstream: str, max_in_flight: int, retry_after: str = "1"):
        from aiohttp import web

        self.upstream = upstream.rstrip("/")
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self.in_flight = 0
        self.most_in_flight = 0  # the most requests it let through at once
        self.passed = 0
        self.refused = 0
        self.arrivals: list[tuple[float, str, bool]] = []  # (time.monotonic(), request key, refused)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rate-limited-proxy", daemon=True)
        self._thread.start()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        port = self._run(self._start())
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start(self) -> int:
        import aiohttp
        from aiohttp import web

        self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return self._runner.addresses[0][1]

    async def _handle(self, request):
        from aiohttp import web

        body = await request.read()
        key = hashlib.sha256(f"{request.method} {request.path_qs} ".encode() + body).hexdigest()
        # The proxy's handlers all run on its one event loop: nothing between here and the count's
        # update awaits, so no lock is needed.
        refused = self.in_flight >= self.max_in_flight
        self.arrivals.append((time.monotonic(), key, refused))
        if refused:
            self.refused += 1
            return web.json_response({"error": {"code": 429, "message": "too many requests"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        self.passed += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
            async with self._client.request(request.method, self.upstream + request.path_qs, data=body,
                                            headers=headers) as answer:
                response = web.StreamResponse(status=answer.status, headers={
                    "Content-Type": answer.headers.get("Content-Type", "application/json")})
                await response.prepare(request)
                try:
                    async for piece in answer.content.iter_any():
                        await response.write(piece)
                    await response.write_eof()
                except ConnectionResetError:
                    pass  # the client closed a stream (a cut): leaving this block closes the server's
                return response
        finally:
            self.in_flight -= 1

    def retry_waits(self) -> list[float]:
        """For each refusal followed by another arrival of the same request: the seconds between them."""
        last_refusal: dict[str, float] = {}
        waits = []
        for t, key, refused in self.arrivals:
            if key in last_refusal:
                waits.append(t - last_refusal.pop(key))
            if refused:
                last_refusal[key] = t
        return waits

    def close(self) -> None:
        async def stop():
            await self._runner.cleanup()
            await self._client.close()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
