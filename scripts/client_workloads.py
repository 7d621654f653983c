"""One peer client's workload, in a process of its own, for
scripts/compare_clients.py: publish N 100-byte messages with the client's
confirm (or its nearest guarantee), or consume the N it published with the
client's ack; print {"rate": msg/s, "cpu_us": client CPU µs per message}.

    python scripts/client_workloads.py CLIENT PHASE PORT N NAME

CLIENT (this broker's own are broker.bench.clients'):
nats-core, nats-jetstream (nats-py), redis-streams (redis-py with hiredis),
mqtt-qos1 (paho-mqtt). PHASE: prepare (MQTT's persistent session),
publish, consume. NAME is the topic, subject, stream or client id to use.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable

PAYLOAD = b"x" * 100
WINDOW = 1000  # messages awaited together


def measured(work: Callable[[], None], count: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"rate": count / wall, "cpu_us": cpu / count * 1e6}


# The peers' Python clients.


def nats_client(phase: str, port: int, count: int, name: str, jetstream: bool) -> dict[str, float]:
    import nats

    async def run() -> dict[str, float]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream() if jetstream else None
        if js is not None and phase == "publish":
            await js.add_stream(name=name, subjects=[name])
        cpu, wall = time.process_time(), time.perf_counter()
        if phase == "publish":
            for _ in range(0, count, WINDOW):
                if js is not None:  # each publish acked by the server
                    await asyncio.gather(*(js.publish(name, PAYLOAD) for _ in range(WINDOW)))
                else:
                    for _ in range(WINDOW):
                        await nc.publish(name, PAYLOAD)
            await nc.flush()
        else:
            assert js is not None
            subscription = await js.pull_subscribe(name, durable="bench")
            seen = 0
            while seen < count:
                for message in await subscription.fetch(batch=WINDOW, timeout=10):
                    await message.ack()
                    seen += 1
            await nc.flush()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await nc.close()
        return {"rate": count / wall, "cpu_us": cpu / count * 1e6}

    return asyncio.run(run())


def redis_streams(phase: str, port: int, count: int, name: str) -> dict[str, float]:
    import redis

    connection = redis.Redis(port=port)

    def work() -> None:
        if phase == "publish":
            for _ in range(0, count, WINDOW):
                pipe = connection.pipeline(transaction=False)
                for _ in range(WINDOW):
                    pipe.xadd(name, {"b": PAYLOAD})
                pipe.execute()  # each XADD answered with its id
            return
        connection.xgroup_create(name, "bench", id="0")
        seen = 0
        while seen < count:
            reply = connection.xreadgroup("bench", "c", {name: ">"}, count=WINDOW)
            ids = [entry_id for _, entries in reply for entry_id, _ in entries]
            connection.xack(name, "bench", *ids)
            seen += len(ids)

    return measured(work, count)


def mqtt_qos1(phase: str, port: int, count: int, name: str) -> dict[str, float]:
    import threading

    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{phase if phase == 'publish' else 'reader'}",
        clean_session=phase == "publish",
    )
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    received = [0]
    done = threading.Event()

    def on_message(client: object, userdata: object, message: object) -> None:
        received[0] += 1
        if received[0] == count:
            done.set()

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if phase == "prepare":  # a persistent session that keeps what comes
            client.subscribe(name, qos=1)
            if not subscribed.wait(10):
                raise RuntimeError("no SUBACK")
            return {"rate": 0.0, "cpu_us": 0.0}

        def work() -> None:
            if phase == "publish":
                for _ in range(0, count, WINDOW):
                    sent = [client.publish(name, PAYLOAD, qos=1) for _ in range(WINDOW)]
                    for info in sent:
                        info.wait_for_publish(30)  # PUBACK
            else:
                if not done.wait(120):
                    raise RuntimeError(f"{received[0]} of {count} came")

        return measured(work, count)
    finally:
        client.loop_stop()
        client.disconnect()


def main() -> None:
    client, phase, port, count, name = sys.argv[1:6]
    n = int(count)
    runs = {
        "nats-core": lambda: nats_client(phase, int(port), n, name, jetstream=False),
        "nats-jetstream": lambda: nats_client(phase, int(port), n, name, jetstream=True),
        "redis-streams": lambda: redis_streams(phase, int(port), n, name),
        "mqtt-qos1": lambda: mqtt_qos1(phase, int(port), n, name),
    }
    print(json.dumps(runs[client]()))


if __name__ == "__main__":
    main()
