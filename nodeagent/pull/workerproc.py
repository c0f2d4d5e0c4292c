"""Entry point of an unpack worker process (see ``workers``): jobs in on stdin, results
out on stdout, each a length-prefixed pickle. Imports only the unpack code."""

from __future__ import annotations

import contextlib
import ctypes
import pickle
import signal
import struct
import sys

from nodeagent.pull.unpack import UnpackError, UnpackJob, UnpackResult, unpack_layer
from nodeagent.pull.watermark import shared_map

PROGRESS = struct.Struct("<qqq")  # compressed bytes read, uncompressed bytes, cancel flag
FRAME = struct.Struct("<Q")  # length prefix of each pickled job and answer
_PR_SET_PDEATHSIG = 1
_REPORT_EVERY = 4 << 20


class _Cancelled(Exception):
    pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent cancels jobs itself
    # Die with the agent; where prctl is missing the worker ends when its stdin closes.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while header := requests.read(FRAME.size):
        job, progress_path = pickle.loads(requests.read(FRAME.unpack(header)[0]))
        try:
            answer: object = run(job, progress_path)
        except UnpackError as exc:
            answer = exc
        except _Cancelled:
            answer = UnpackError(f"layer {job.digest}: cancelled")
        except Exception as exc:  # a bug: report it rather than die silently
            answer = UnpackError(f"layer {job.digest}: unpack failed: {exc!r}")
        payload = pickle.dumps(answer)
        answers.write(FRAME.pack(len(payload)) + payload)
        answers.flush()


def run(job: UnpackJob, progress_path: str) -> UnpackResult:
    shared = shared_map(progress_path, PROGRESS.size, create=False)
    last = [0]

    def report(compressed: int, uncompressed: int) -> None:
        if uncompressed - last[0] >= _REPORT_EVERY:
            last[0] = uncompressed
            struct.pack_into("<qq", shared, 0, compressed, uncompressed)
            if struct.unpack_from("<q", shared, 16)[0]:
                raise _Cancelled()

    try:
        result = unpack_layer(job, report)
        struct.pack_into("<qq", shared, 0, job.size, result.unpacked_bytes)
        return result
    finally:
        shared.close()


if __name__ == "__main__":
    main()
