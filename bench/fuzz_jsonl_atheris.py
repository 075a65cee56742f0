"""Coverage-guided fuzzing of the JSONL validator with atheris (`make fuzz` installs atheris and runs this).

Each input is split into an upload and a chunking: the validator is fed the upload in those chunks, and must
never raise, must give the same report as a one-shot validation, and must name only lines that exist.
Arguments are libFuzzer's, e.g. `-max_total_time=120` or `-runs=100000`. Prints the number of executions.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from core.training_data import StreamingValidator, validate_bytes


def one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    max_line_bytes = provider.PickValueInList([16, 256, 1 << 20])
    cuts = sorted(provider.ConsumeIntInRange(0, 4096) for _ in range(provider.ConsumeIntInRange(0, 8)))
    data = provider.ConsumeBytes(provider.remaining_bytes())
    whole = validate_bytes(data, max_line_bytes=max_line_bytes, min_examples=1)
    streaming = StreamingValidator(max_line_bytes=max_line_bytes, min_examples=1)
    start = 0
    for cut in (c for c in cuts if c <= len(data)):
        streaming.feed(data[start:cut])
        start = cut
    streaming.feed(data[start:])
    if streaming.finish() != whole:
        raise AssertionError("chunked and one-shot validation disagree")
    lines = data.count(b"\n") + 1
    for error in whole.errors:
        if not 0 <= error.line <= lines:
            raise AssertionError(f"error names line {error.line} of a {lines}-line file")


def main() -> None:
    # libFuzzer ends the process itself and prints "Done <N> runs in <S> second(s)": that is the count.
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
