"""CPU per request of the HTTP clients the hot paths could use, against the stand-in API, in one run.

    python benchmarks/http_costs.py [--requests 3000]

The stand-in runs in its own process; each client sends the same PATCH (a worker's final update) over a
kept-alive connection, one at a time, and this process's CPU time is divided by the requests sent:
``requests`` (the public API's transport), ``urllib3``'s connection pool directly, ``http.client``, and
ours (the pooled transport, one request per call and in batches of 32 as the senders send). Then the
parsers on their own: one API answer parsed by httptools (which ours uses) and by h11.
"""

from __future__ import annotations

import argparse
import base64
import http.client as http_client
import json
import subprocess
import sys
import time
import timeit
from collections.abc import Callable

import h11
import httptools
import urllib3

import taskbadger
from taskbadger import endpoints, http
from taskbadger.http.requests_backend import RequestsTransport


def cpu_per_call(calls: int, send: Callable[[int], None]) -> float:
    send(0)  # connect first: the steady state is what counts
    start = time.process_time()
    for i in range(calls):
        send(i)
    return (time.process_time() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    n = args.requests
    server = subprocess.Popen([sys.executable, "-m", "taskbadger.testing", "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        url = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
        key = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
        config = taskbadger.init(token=key, host=url)
        task = taskbadger.create_task("http costs")
        path = f"/api/{config.organization_slug}/{config.project_slug}/tasks/{task.id}/"
        secret = base64.b64decode(key).decode().split("/")[2]
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "bench"}
        host, port = url.split("//")[1].split(":")
        rows = []

        transport = RequestsTransport()

        def requests_call(i: int) -> None:
            transport.exchange(config, http.build_request(config, "PATCH", task.id, json_body={"value": i}))

        rows.append(("requests (the public API's transport)", cpu_per_call(n // 3, requests_call)))

        pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1, retries=False)
        rows.append(("urllib3 connection pool", cpu_per_call(n, lambda i: pool.request(
            "PATCH", path, body=json.dumps({"value": i}).encode(), headers=headers).data)))

        conn = http_client.HTTPConnection(host, int(port))

        def client_call(i: int) -> None:
            conn.request("PATCH", path, body=json.dumps({"value": i}).encode(), headers=headers)
            conn.getresponse().read()

        rows.append(("http.client", cpu_per_call(n, client_call)))
        rows.append(("ours, pooled transport, one update per call", cpu_per_call(
            n, lambda i: endpoints.update_many([(task.id, {"value": i})]))))
        rows.append(("ours, pooled transport, batches of 32 (per update)", cpu_per_call(
            n // 32, lambda i: endpoints.update_many([(task.id, {"value": i})] * 32)) / 32))
    finally:
        server.terminate()

    answer = (b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: Tue, 01 Dec 2026 21:02:01 GMT\r\n"
              b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}")

    class Callbacks:
        def on_body(self, body: bytes) -> None:
            pass

    def with_httptools() -> None:
        httptools.HttpResponseParser(Callbacks()).feed_data(answer)

    def with_h11() -> None:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="PATCH", target=path, headers=[("Host", "x"), ("Content-Length", "0")]))
        client.send(h11.EndOfMessage())
        client.receive_data(answer)
        while not isinstance(client.next_event(), (h11.EndOfMessage, type(h11.NEED_DATA))):
            pass

    rows.append(("parse one answer: httptools", timeit.timeit(with_httptools, number=20000) / 20000 * 1e6))
    rows.append(("format a request and parse its answer: h11", timeit.timeit(with_h11, number=5000) / 5000 * 1e6))
    print(f"| client ({n} PATCH requests, stand-in API in another process) | µs of CPU per request |")
    print("|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
