"""The ceilings a coordinator figure is compared with, each served in a process of its own.

    python bench/bare.py hypercorn URL_FILE   # a bare ASGI app on Hypercorn (trio worker)
    python bench/bare.py quart URL_FILE       # one Quart-Trio route on the same Hypercorn

Both read the whole request body and answer every request with a small fixed JSON document (the
shape of a submission's answer), so what is left of a coordinator figure against them is what
the coordinator itself costs: auth, validation, the store, hooks. The URL is written to
URL_FILE once the socket listens.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

BODY = b'{"id":"job_01jt9hello0000000000000000","state":"QUEUED","createdAt":"2026-04-26T09:13:21.000Z"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 201 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def quart_app() -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("bench-bare")

    @app.route("/v0/jobs", methods=["POST"])
    async def submit() -> Response:
        await request.get_data()
        return Response(BODY, status=201, content_type="application/json")

    @app.route("/v0/jobs/<job_id>", methods=["GET"])
    async def get(job_id: str) -> Response:
        return Response(BODY, status=200, content_type="application/json")

    return app


def serve(kind: str, url_file: Path) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    app = bare_app if kind == "hypercorn" else quart_app()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, app, config)
            await trio.Path(url_file).write_text(str(binds[0]))

    trio.run(run)


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]))
