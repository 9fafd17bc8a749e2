"""Coverage-guided fuzzing of the restricted loader and aload (atheris, libFuzzer).

    python fuzz/fuzz_load.py -max_total_time=600      # or -atheris_runs=100000
    python fuzz/fuzz_load.py crash-<hash>             # replay one input

Needs the ``fuzz`` extra (``pip install '.[fuzz]'``); not run in CI. With no corpus directory
on the command line it uses ``fuzz/corpus/``, seeded on first use with pickles of builtin data
at every protocol and with the attacks of tests/hostile.py (small). Each input is loaded
restricted (the presets and the attacks' class, small limits) through
``loads``, and every fourth through ``aload`` too, over an anyio stream. The property: only
``UnpicklingError`` (or a subclass) and ``EOFError`` come out; any other exception, a crash or
a hang (libFuzzer's ``-timeout``, 25 s by default) is a finding, and memory beyond
``-rss_limit_mb`` (2048 by default) too. Where the compiled accelerator is built, each input is
also loaded on the pure-Python path (`streampickle._policy.reader.SCAN` set to None): the two
must give the same object (pickled again, byte for byte) or the same error and message.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import pickle
import sys
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    import anyio
    from anyio.streams.buffered import BufferedByteReceiveStream

    import streampickle
    from streampickle._policy import reader

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import hostile  # the attacks of the attack tests, as seeds

POLICY = (
    streampickle.ALLOW_BUILTINS
    | streampickle.ALLOW_COLLECTIONS
    | streampickle.ALLOW_DATETIME
    | streampickle.ALLOW_DECIMAL
    | [(hostile.ME, "Node"), ("builtins", "tuple")]
)
#: Small limits keep each input fast; they are what bounds time and memory per input.
LIMITS: dict[str, Any] = {
    "max_frame_size": 1 << 16,
    "max_object_size": 1 << 20,
    "max_line_length": 1 << 12,
    "max_payload_size": 1 << 16,
    "max_memo_size": 1 << 12,
    "max_opcodes": 20_000,
    "max_stack_depth": 2_000,
}
EXPECTED = (pickle.UnpicklingError, EOFError)
ACCELERATED = reader.SCAN
CORPUS = Path(__file__).with_name("corpus")
SEEDS: list[Any] = [
    None, True, 1, -(2**70), 1.5, 1j, "text\u00e9", b"bytes", bytearray(b"ba"), (1, 2),
    [1, [2, [3]]], {"k": {1, 2}, "f": frozenset({3})}, range(3), slice(1, 5, 2), ...,
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), decimal.Decimal("1.5"),
    {"shared": (s := ["x"]), "again": s}, b"p" * 70_000,
]  # fmt: skip


def seed_corpus() -> None:
    CORPUS.mkdir(exist_ok=True)
    if any(CORPUS.iterdir()):
        return
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for index, obj in enumerate(SEEDS):
            data = pickle.dumps(obj, protocol)
            if len(data) < 4096:  # libFuzzer's default -max_len; the big one seeds framing
                (CORPUS / f"seed-{protocol}-{index}").write_bytes(data)
    (CORPUS / "seed-framed-big").write_bytes(pickle.dumps(SEEDS[-1][:3000], 5))
    attacks = {f"deep-{shape}": build(60) for shape, build in hostile.DEEP.items()}
    attacks |= {
        "exponential-key": hostile.exponential_key(40),
        "rehashed-int": hostile.rehashed_int(600, 200),
        **{f"colliding-{name}": make(100) for name, make in hostile.COLLIDING.items()},
        "shadowed-append": hostile.shadowed("append", 1 << 20),
        "shadowed-setstate": hostile.shadowed("__setstate__", 1 << 20),
        "unknown-encoding": hostile.unknown_encoding(0, 100),
    }
    for name, data in attacks.items():
        (CORPUS / f"seed-attack-{name.replace(' ', '-')}").write_bytes(data)


async def aload(data: bytes) -> Any:
    send, receive = anyio.create_memory_object_stream[bytes](len(data) // 512 + 2)
    for start in range(0, len(data), 512):  # pieces, so reads span them
        send.send_nowait(data[start : start + 512])
    send.close()
    with receive:
        return await streampickle.aload(BufferedByteReceiveStream(receive), allow=POLICY, **LIMITS)


def outcome(data: bytes, scan: Any) -> tuple[Any, ...]:
    """What ``loads`` gives with *scan* as the accelerator (None: the pure-Python path)."""
    reader.SCAN = scan
    try:
        obj = streampickle.loads(data, allow=POLICY, **LIMITS)
    except EXPECTED as exc:
        return ("error", type(exc).__name__, str(exc))
    finally:
        reader.SCAN = ACCELERATED
    try:
        return ("object", pickle.dumps(obj, 5))
    except Exception as exc:  # an object pickle cannot write back (it loaded, which counts)
        return ("loaded", type(obj).__name__, type(exc).__name__)


def test_one_input(data: bytes) -> None:
    accelerated = outcome(data, ACCELERATED)
    if ACCELERATED is not None:
        pure = outcome(data, None)
        assert accelerated == pure, f"the accelerator gives {accelerated!r}, pure Python {pure!r}"
    if data[:1] and data[0] % 4 == 0:
        with contextlib.suppress(*EXPECTED):
            anyio.run(aload, data)


def main() -> None:
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        seed_corpus()
        argv.append(str(CORPUS))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
