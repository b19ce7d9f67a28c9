"""AFD pieces without an engine: the FFN shards against the unsharded FFN (and against the
model's own weights), and the link between two real processes, including a dead peer."""

from __future__ import annotations

import datetime
import multiprocessing
import os

import pytest
import torch
import torch.nn.functional as F

from loadtests.servers import free_port
from server.afd import transport
from server.afd.ffn_worker import ShardedFFN
from server.afd.transport import TAG_DATA, TAG_HEADER, TAG_OUT, Link, LinkError


@pytest.fixture(scope="module")
def model_dir():
    from server.model_store import prepare

    return prepare()[0]


def test_shards_sum_to_the_whole_ffn(model_dir):
    from safetensors import safe_open

    cpu = torch.device("cpu")
    whole = ShardedFFN(model_dir, 0, 1, torch.float32, cpu)
    halves = [ShardedFFN(model_dir, i, 2, torch.float32, cpu) for i in (0, 1)]
    x = torch.randn(5, whole.hidden, generator=torch.Generator().manual_seed(0))
    for layer in (0, 17, whole.layers - 1):
        torch.testing.assert_close(halves[0](layer, x) + halves[1](layer, x), whole(layer, x),
                                   atol=1e-4, rtol=1e-4)  # float32 sums in another order
    names = {w: f"model.layers.3.mlp.{w}_proj.weight" for w in ("gate", "up", "down")}
    weights = {}
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            weights |= {w: f.get_tensor(n).float() for w, n in names.items() if n in f.keys()}
    want = F.linear(F.silu(F.linear(x, weights["gate"])) * F.linear(x, weights["up"]),
                    weights["down"])
    torch.testing.assert_close(whole(3, x), want, atol=1e-5, rtol=1e-4)


def test_a_shard_count_that_does_not_divide_is_refused(model_dir):
    with pytest.raises(ValueError, match="does not split"):
        ShardedFFN(model_dir, 0, 7, torch.float32, torch.device("cpu"))


def _peer(port: int, die: bool) -> None:
    store = transport.connect_store(f"127.0.0.1:{port}", timeout=30)
    link = Link.join(store, 0, 1, rank=1, device=torch.device("cpu"),
                     timeout=datetime.timedelta(seconds=30))
    header, work = link.receive((3,), torch.int64, TAG_HEADER)
    Link.wait([work])
    x, work = link.receive((int(header[1]), 8), torch.float32, TAG_DATA)
    Link.wait([work])
    if die:
        os._exit(0)
    Link.wait(link.post([x * 2], TAG_OUT))
    link.receive((3,), torch.int64, TAG_HEADER)[1].wait()  # until the other side closes


@pytest.mark.parametrize("die", [False, True], ids=["answers", "dies"])
def test_link_round_trip_and_a_dead_peer(die):
    port = free_port()
    store = transport.connect_store(f"127.0.0.1:{port}", timeout=30, master=True)
    peer = multiprocessing.get_context("spawn").Process(target=_peer, args=(port, die))
    peer.start()
    link = None
    try:
        link = Link.join(store, 0, 1, rank=0, device=torch.device("cpu"),
                         timeout=datetime.timedelta(seconds=30))
        x = torch.arange(24, dtype=torch.float32).view(3, 8)
        sends = link.post([torch.tensor([0, 3, 0])], TAG_HEADER) + link.post([x], TAG_DATA)
        out, work = link.receive(x.shape, x.dtype, TAG_OUT)
        if die:
            with pytest.raises(LinkError):
                Link.wait(sends + [work], datetime.timedelta(seconds=10))
        else:
            Link.wait(sends + [work], datetime.timedelta(seconds=10))
            assert torch.equal(out, x * 2)
    finally:
        del link  # closes the group: the answering peer's last receive ends
        peer.join(30)
        if peer.is_alive():
            peer.kill()


@pytest.mark.parametrize("argv, message", [
    (["--attention", "no-port-here"], "expected HOST:PORT"),
    (["--attention", "127.0.0.1:1", "--shard", "2", "--shards", "2"], "--shard 2 outside"),
])
def test_afd_ffn_refuses_bad_flags(argv, message, capsys):
    from server.cli import main

    assert main(["afd-ffn", *argv]) == 2
    assert message in capsys.readouterr().err
