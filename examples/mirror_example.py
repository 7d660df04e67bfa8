"""Mirror a logstore topic into NATS JetStream, then read it back from the stream.

    pip install -e '.[nats]'                      # nats-py
    apt-get install nats-server                   # or any nats-server >= 2.2 with JetStream
    python examples/mirror_example.py             # starts a throwaway local JetStream server
    python examples/mirror_example.py --servers nats://n1:4222,nats://n2:4222,nats://n3:4222

What it does: writes 20,000 orders into a store, mirrors them with a background
``JetStreamMirror`` while publishing 1,000 more, waits until the lag is 0, prints the status,
then reads the stream back with a JetStream consumer and checks that every partition arrived
exactly once and in order, decoding a message back into its logstore record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402

try:
    import nats  # noqa: E402
    from logstore.mirror import JetStreamMirror, decode_message  # noqa: E402
except ImportError as e:
    sys.exit(f"{e}")


def local_jetstream(tmp: str):
    """A single-node JetStream server on a free port (for trying the example out)."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(binary, os.X_OK):
        sys.exit("nats-server not found: apt-get install nats-server, or pass --servers")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port),
                             "-sd", os.path.join(tmp, "nats")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"nats://127.0.0.1:{port}"


async def read_back(servers, stream):
    """Every message of the stream through an ordered push consumer: [(subject, headers, data)]."""
    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    total = (await js.stream_info(stream)).state.messages
    out, done = [], asyncio.Event()

    async def on_msg(msg):
        out.append((msg.subject, msg.headers, msg.data))
        if len(out) >= total:
            done.set()

    sub = await js.subscribe(">", stream=stream, cb=on_msg, ordered_consumer=True)
    await asyncio.wait_for(done.wait(), 60)
    await sub.unsubscribe()
    await js.delete_stream(stream)      # tidy up: the next run mirrors a new store
    await nc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", help="NATS URLs, comma-separated (default: start a local one)")
    ap.add_argument("--stream", default="ORDERS_EXAMPLE")
    ap.add_argument("--records", type=int, default=20_000)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="logstore-mirror-example-")
    server = None
    try:
        if args.servers:
            servers = args.servers.split(",")
        else:
            server, url = local_jetstream(tmp)
            servers = [url]
            print(f"started a local JetStream server at {url}")

        with logstore.Store.open(os.path.join(tmp, "store"), fsync="never") as store:
            orders = store.topic("orders", partitions=4)
            for i in range(args.records):
                orders.publish(b'{"order": %d}' % i, key=b"user-%d" % (i % 50),
                               headers={"type": b"created"})

            mirror = JetStreamMirror(store, "orders", servers=servers, stream=args.stream)
            mirror.start()                                   # background thread
            for i in range(1_000):                           # keeps publishing meanwhile
                orders.publish(b'{"order": "late-%d"}' % i, key=b"user-%d" % (i % 50))
            t0 = time.monotonic()
            while mirror.status()["lag"] > 0 or mirror.status()["in_flight"]:
                time.sleep(0.2)
            status = mirror.status()
            mirror.stop()
            mirror.close()
            print(f"mirrored in {time.monotonic() - t0:.1f} s: lag {status['lag']}, "
                  f"connected {status['connected']}, stream replicas "
                  f"{status['stream_replicas']}, last error {status['last_error']}")
            for p, st in status["partitions"].items():
                print(f"  partition {p}: end_offset {st['end_offset']}, committed "
                      f"{st['committed']}, lag {st['lag']}")
            ends = orders.end_offsets()

        msgs = asyncio.run(read_back(servers, args.stream))
        seen = {p: [] for p in ends}
        for subject, headers, data in msgs:
            rec = decode_message(headers, data)
            seen[rec.partition].append(rec.offset)
        assert all(seen[p] == list(range(n)) for p, n in ends.items()), "gap or duplicate!"
        print(f"stream {args.stream!r} holds {len(msgs)} messages = {sum(ends.values())} "
              f"records, every partition complete and in order")
        subject, headers, data = msgs[0]
        print(f"first message: subject {subject}, headers {dict(headers)}, data {data!r}")
        print(f"  decoded: {decode_message(headers, data)}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
