#!/usr/bin/env python3
"""CPU per service-to-service call, two copies of the code side by side (issue 12).

    python bench/transport_calls.py --services /tmp/code-main/services --services services

One bare Falcon app under waitress (the roles' server) answers; for each round and each copy,
in turn, a client process with that copy on its path makes ``--calls`` calls of each kind
through ``ServiceClient.request`` (the path every role's client takes): a GET answered with 60
bytes of JSON, a POST with query parameters answered with a little JSON (a lease call), and a
350 KB image streamed. It prints the client's and the server's CPU ms per call; the client's
is what the change is about. Only 127.0.0.1; bounded by ``--calls`` and ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_BYTES = 350_000
KINDS = ("get_json", "post_params", "stream_image")


def serve(port: int) -> None:
    import falcon
    import waitress

    image = os.urandom(IMAGE_BYTES)

    class Routes:
        def on_get_json(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"id": req.get_param("id"), "stateName": "queued", "attempts": 0}

        def on_post_params(self, req: falcon.Request, resp: falcon.Response) -> None:
            # Not a 204: waitress closes the connection after every 204 (no Content-Length).
            resp.media = {"id": req.get_param("id"), "leaseExpiresAt": 1764600000.0}

        def on_get_image(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.content_type = "image/jpeg"
            resp.data = image

    app = falcon.App()
    routes = Routes()
    for kind, suffix in zip(KINDS, ("json", "params", "image"), strict=True):
        app.add_route(f"/{kind}", routes, suffix=suffix)
    waitress.serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(address: str, calls: int, server_pid: int) -> None:
    """Runs with one copy of the code on sys.path; prints its figures as JSON."""
    import time

    from darkroom.core import transport
    from darkroom.core.discovery import ServiceClient, ServiceLocator

    class Registry:
        def get(self, key: str) -> str:
            return address

    # The copy before the change passes a requests session, the one after a Transport.
    wire = transport.Transport() if hasattr(transport, "Transport") else transport.new_session()
    service = ServiceClient(
        ServiceLocator(Registry(), ttl=60), "databaseAddress", wire, 5, {"Authorization": "x"}
    )
    params = {"id": "0123456789abcdef", "lease": "a" * 32}

    def get_json() -> None:
        with service.request("GET", "/get_json", params={"id": "0123456789abcdef"}) as answer:
            answer.json()

    def post_params() -> None:
        service.request("POST", "/post_params", params=params).close()

    def stream_image() -> None:
        with service.request("GET", "/stream_image", stream=True) as answer:
            chunks = answer.stream if hasattr(answer, "stream") else answer.iter_content
            for _ in chunks(IMAGE_BYTES):
                pass

    figures = {}
    for name, call in zip(KINDS, (get_json, post_params, stream_image), strict=True):
        for _ in range(200):
            call()
        server_before, before = cpu_seconds(server_pid), time.process_time()
        for _ in range(calls):
            call()
        figures[name] = {
            "client": 1000 * (time.process_time() - before) / calls,
            "server": 1000 * (cpu_seconds(server_pid) - server_before) / calls,
        }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", action="append", required=True, help="a services folder")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from harness.launch import answers, free_port, wait_until

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/get_json"), 30, "the server")
        results: list[list[dict]] = [[] for _ in args.services]
        for _ in range(args.rounds):
            for path, runs in zip(args.services, results, strict=True):
                env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
                command = [sys.executable, __file__, "--client", f"127.0.0.1:{port}"]
                command += [str(args.calls), str(server.pid)]
                output = subprocess.run(command, env=env, check=True, capture_output=True)
                runs.append(json.loads(output.stdout))
    finally:
        server.terminate()
        server.wait(10)
    print(f"CPU ms per call, {args.calls} calls of each kind, best of {args.rounds} rounds")
    for path, runs in zip(args.services, results, strict=True):
        print(f"  {path}")
        for kind in KINDS:
            client_ms = min(run[kind]["client"] for run in runs)
            server_ms = min(run[kind]["server"] for run in runs)
            print(f"    {kind:13s} client {client_ms:.3f}  server {server_ms:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
