"""The one small interface AFD traffic goes through: a `Link` between an attention engine
(rank 0) and one FFN worker (rank 1), over a two-member torch.distributed process group
(gloo on CPU, NCCL on CUDA) rendezvoused in the attention server's TCPStore.

Messages, in order on the link: attention -> worker a header (int64: layer, tokens,
sequence number) then the hidden states (tokens, hidden) in the model's dtype; worker ->
attention the FFN output of the same shape. Several micro-batches may be in flight: the
attention side posts every send, then collects the answers in order.

Generations: a worker that (re)starts bumps `link{j}/generation` in the store and waits
for the attention engine to join that generation's group; the engine rebuilds a link when
it finds the generation moved (after a failed exchange). A restarted worker therefore
rejoins a running server without restarting it.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from server.afd import STORE_PREFIX

TAG_HEADER, TAG_DATA, TAG_OUT = 1, 2, 3
IDLE = datetime.timedelta(days=365)  # a worker waits for work as long as it takes
STORE_OPS = datetime.timedelta(seconds=60)  # one store operation (a key not there yet)


class LinkError(RuntimeError):
    """The peer died, stalled past the deadline, or never showed up."""


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def connect_store(address: str, timeout: float, master: bool = False) -> dist.TCPStore:
    """A client of the attention server's store (or the store itself, `master`), retrying
    for `timeout` seconds (may be infinite) while the server is not up yet."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dist.TCPStore(host, port, is_master=master, wait_for_workers=False,
                                 timeout=STORE_OPS, use_libuv=True)
        except (RuntimeError, OSError) as exc:  # refused: not listening yet
            if master or time.monotonic() > deadline:
                raise LinkError(f"AFD store {address} unreachable: {exc}") from exc
            time.sleep(0.5)


def key(shard: int, name: str) -> str:
    return f"{STORE_PREFIX}/link{shard}/{name}"


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class Link:
    """One side of a link; `rank` 0 is the attention engine, 1 the FFN worker."""

    group: dist.ProcessGroup
    rank: int
    generation: int
    device: torch.device

    @classmethod
    def join(cls, store: dist.Store, shard: int, generation: int, rank: int,
             device: torch.device, timeout: datetime.timedelta) -> Link:
        prefixed = dist.PrefixStore(key(shard, f"gen{generation}/"), store)
        if backend_for(device) == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            group = dist.ProcessGroupNCCL(prefixed, rank, 2, options)
        else:
            group = dist.ProcessGroupGloo(prefixed, rank, 2, timeout)
        return cls(group, rank, generation, device)

    @property
    def peer(self) -> int:
        return 1 - self.rank

    def post(self, tensors: list[torch.Tensor], tag: int) -> list:
        with _as_link_error():
            return [self.group.send([t], self.peer, tag) for t in tensors]

    def receive(self, shape, dtype, tag: int) -> tuple[torch.Tensor, object]:
        out = torch.empty(shape, dtype=dtype, device=self.device)
        with _as_link_error():
            return out, self.group.recv([out], self.peer, tag)

    @staticmethod
    def wait(works: list, timeout: datetime.timedelta | None = None) -> None:
        with _as_link_error():
            for work in works:
                if timeout is None:
                    work.wait()
                else:
                    work.wait(timeout)


@contextlib.contextmanager
def _as_link_error():
    """The process group's errors (peer gone, deadline passed) as a LinkError."""
    try:
        yield
    except LinkError:
        raise
    except RuntimeError as exc:
        raise LinkError(str(exc).splitlines()[0][:300]) from exc
