"""The attention side of AFD, inside vLLM's worker process: models whose decoder layers
call remote FFN workers instead of their own FFN.

`AFDLlamaForCausalLM` is vLLM's Llama with each layer's `mlp` replaced by `RemoteFFN`
(its weights are not loaded here; the workers hold them). `AFDClient` owns the links:
per layer it splits the tokens into micro-batches, posts every micro-batch to every
worker (each holds a shard of the FFN), then collects and sums the answers, so a worker
computes one micro-batch while the next is on the wire. A failed exchange (worker dead,
stalled past `timeout`) drops the links and waits up to `timeout` for the workers to be
back (a restarted worker takes a new generation), then retries once: the FFN is
stateless. Past that the error propagates, the engine stops, requests in flight end with
an error and /ready turns false.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import threading
import time

import torch
from torch import nn
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.llama import LlamaForCausalLM

from cache_policies.stats import worker_stats
from server.afd import FIELDS, KIND, transport
from server.afd.transport import TAG_DATA, TAG_HEADER, TAG_OUT, Link, LinkError

ENV = "LONGSERVE_AFD"  # JSON: store, shards, micro_batches, timeout (set by the server)

# model architecture served -> its AFD form, registered by the plugin
ARCHITECTURES = {"LlamaForCausalLM": "LongserveAFDLlamaForCausalLM"}
STATS = worker_stats(KIND, FIELDS)


class AFDClient:
    def __init__(self, store: str, shards: int, micro_batches: int, timeout: float,
                 device: torch.device) -> None:
        self.store = transport.connect_store(store, timeout=timeout)
        self.shards, self.micro_batches, self.timeout = shards, micro_batches, timeout
        self.device = device
        self.links: list[Link] | None = None
        self.generations = [0] * shards  # last generation joined, per shard
        self.sequence = 0

    # ---- links
    def _connect(self, deadline: float) -> list[Link]:
        links = []
        for shard in range(self.shards):
            while True:  # a generation newer than the one last used: a (re)started worker
                generation = self.store.add(transport.key(shard, "generation"), 0)
                if generation > self.generations[shard]:
                    break
                if time.monotonic() > deadline:
                    raise LinkError(f"FFN worker for shard {shard}/{self.shards} not (back) "
                                    f"within {self.timeout:g}s")
                time.sleep(0.05)
            meta = json.loads(self.store.get(transport.key(shard, f"meta{generation}")))
            if meta["shards"] != self.shards or meta["shard"] != shard:
                raise LinkError(f"FFN worker holds shard {meta['shard']}/{meta['shards']}, "
                                f"expected {shard}/{self.shards}")
            links.append(Link.join(self.store, shard, generation, rank=0, device=self.device,
                                   timeout=datetime.timedelta(seconds=self.timeout)))
            self.generations[shard] = generation
        return links

    def _drop(self) -> None:
        self.links = None  # closes the groups: healthy workers see it and rejoin
        gc.collect()

    # ---- calls
    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        for attempt in (0, 1):
            deadline = time.monotonic() + self.timeout
            try:
                if self.links is None:
                    self.links = self._connect(deadline)
                return self._exchange(layer, x)
            except LinkError as exc:
                self._drop()
                if attempt:
                    raise LinkError(f"AFD: the FFN of layer {layer} failed twice: {exc}") \
                        from exc
        raise AssertionError("unreachable")

    def _exchange(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        chunks = [c.contiguous() for c in x.split(-(-len(x) // self.micro_batches))]
        sends, recvs, parts = [], [], []
        for chunk in chunks:
            header = torch.tensor([layer, len(chunk), self.sequence], dtype=torch.int64,
                                  device=x.device)
            self.sequence += 1
            for link in self.links:
                sends += link.post([header], TAG_HEADER) + link.post([chunk], TAG_DATA)
        for chunk in chunks:
            row = []
            for link in self.links:
                out, work = link.receive(chunk.shape, chunk.dtype, TAG_OUT)
                row.append(out)
                recvs.append(work)
            parts.append(row)
        Link.wait(sends + recvs, datetime.timedelta(seconds=self.timeout))
        moved = x.numel() * x.element_size() * len(self.links)  # each way
        for direction in ("to_ffn", "from_ffn"):
            STATS.add(direction, exchanges=1, tokens=len(x), bytes=moved)
        return torch.cat([row[0] if len(row) == 1 else torch.stack(row).sum(0)
                          for row in parts])


_CLIENT: AFDClient | None = None
_LOCK = threading.Lock()


def client(device: torch.device) -> AFDClient:
    global _CLIENT
    with _LOCK:
        if _CLIENT is None:
            config = json.loads(os.environ[ENV])
            _CLIENT = AFDClient(config["store"], config["shards"], config["micro_batches"],
                                config["timeout"], device)
        return _CLIENT


class RemoteFFN(nn.Module):
    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if get_forward_context().attn_metadata is None:  # profiling and warm-up: shapes only
            return torch.zeros_like(hidden_states)
        return client(hidden_states.device).ffn(self.layer, hidden_states)


class AFDLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise NotImplementedError("AFD attention servers run with tensor parallelism 1")
        for index, layer in enumerate(self.model.layers):
            layer.mlp = RemoteFFN(index)

    def load_weights(self, weights):
        return super().load_weights((name, w) for name, w in weights if ".mlp." not in name)
