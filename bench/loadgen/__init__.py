"""Load generator for the bench suite: runs in its own process, never in the server's.

    python -m bench.loadgen tail  --target weft|piping|raw --role producer|reader|both ...
    python -m bench.loadgen post  --port P --id ID --size BYTES [--chunked --hold] [--wait-go]
    python -m bench.loadgen read  --port P --id ID [--stall] [--rcvbuf BYTES]
    python -m bench.loadgen many  --port P --streams N --size BYTES   (live, until 'finish')
    python -m bench.loadgen sink  /  source --port P --size BYTES   (loopback TCP ceiling)

Only the standard library (plus uvloop when it is installed): raw sockets and
asyncio protocols, because an HTTP client library costs more CPU per line than
the server under test. It talks to the orchestrator (bench/run.py) in lines:
events on stdout (``created``, ``attached``, ``listening PORT``, ``written``,
``result {json}``), commands on stdin (``go``, ``resume``, ``finish``).

``tail`` is the latency load: each producer sends a chunked POST and writes one
line every ``--interval-ms``; each line is ``--line-bytes`` long and starts with
the producer's ``time.perf_counter_ns()`` taken just before the write (CLOCK_MONOTONIC,
so comparable across processes on one machine), its sequence number and its
stream number. Each reader parses its GET response's chunked framing, splits
lines, and records receipt time minus write time. Readers also check that every
line arrives exactly once and in order.
"""
