"""atheris (libFuzzer) over the datagram entry point: ``python -m fuzz.run [libFuzzer flags] [CORPUS_DIR]``.

Every input goes through ``fuzz.harness.run_one``: first datagram -> ``decode`` -> path policy -> a
``ReadTransfer`` driven by the rest of the input, with every invariant checked after every call.
An exception escaping it is a crash: libFuzzer stops and writes the input to ``crash-<sha1>``;
replay it with ``python -m fuzz.run crash-<sha1>``.

Examples::

    python -m fuzz.run -runs=1000000 -max_len=512          # a fixed number of inputs
    python -m fuzz.run -max_total_time=3600 fuzz/corpus     # an hour, keeping the corpus it grows

libFuzzer prints ``Done N runs in S second(s)`` at the end: N is the number of inputs executed.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["edgetftp", "fuzz"]):
    from fuzz.harness import run_one


def test_one_input(data: bytes) -> None:
    run_one(data)


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
