"""`longserve afd-ffn`: an FFN worker. It holds shard `--shard` of `--shards` of every
layer's FFN (a slice of the intermediate dimension: rows of gate/up, columns of down) and
serves one or more attention servers (`--attention HOST:PORT,...`), one link and one
thread each. Stateless: a request's FFN call can be retried on a restarted worker.

Per attention server, forever: connect to its store (retrying while it is down), take the
next link generation, announce what it holds, join the link and answer FFN calls until
the link breaks; then start over (that is how it rejoins a restarted server, and how a
restarted worker rejoins a running one). A heartbeat per attention server runs beside it
for the worker's whole life."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from server.afd import transport
from server.afd.transport import IDLE, TAG_DATA, TAG_HEADER, TAG_OUT, Link, LinkError

logger = logging.getLogger("longserve.afd")

HEARTBEAT_S = 0.5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _tensors(model_dir: Path, names: set[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in set(f.keys()) & names:
                out[name] = f.get_tensor(name)
    if missing := names - set(out):
        raise ValueError(f"{model_dir}: no tensors {sorted(missing)[:3]}...")
    return out


class ShardedFFN:
    """Every layer's SwiGLU FFN (Llama family: `model.layers.N.mlp.{gate,up,down}_proj`),
    shard `shard` of `shards` along the intermediate dimension. The attention side sums
    the shards' outputs."""

    def __init__(self, model_dir: Path, shard: int, shards: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"AFD supports SwiGLU FFNs, not {config['hidden_act']}")
        self.layers, self.hidden = config["num_hidden_layers"], config["hidden_size"]
        inter = config["intermediate_size"]
        if inter % shards:
            raise ValueError(f"intermediate size {inter} does not split into {shards} shards")
        part = slice(shard * inter // shards, (shard + 1) * inter // shards)
        names = {f"model.layers.{i}.mlp.{w}_proj.weight" for i in range(self.layers)
                 for w in ("gate", "up", "down")}
        w = _tensors(model_dir, names)
        self.gate_up, self.down = [], []
        for i in range(self.layers):
            p = f"model.layers.{i}.mlp."
            self.gate_up.append(torch.cat([w[p + "gate_proj.weight"][part],
                                           w[p + "up_proj.weight"][part]]).to(device, dtype))
            self.down.append(w[p + "down_proj.weight"][:, part].contiguous().to(device, dtype))
        self.dtype, self.device, self.shard, self.shards = dtype, device, shard, shards

    def __call__(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up[layer]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down[layer])

    def meta(self) -> str:
        return json.dumps({"layers": self.layers, "hidden": self.hidden,
                           "dtype": str(self.dtype).removeprefix("torch."),
                           "shard": self.shard, "shards": self.shards})


def _heartbeat(address: str, shard: int, stop: threading.Event) -> None:
    """Tell one attention server this worker is alive, every HEARTBEAT_S, for as long as
    the worker runs: across link breaks and rejoins (a gap there made a server that had
    just turned ready refuse the next request) and across restarts of the server (its
    store comes back empty; the counter starts again)."""
    store = None
    while not stop.wait(HEARTBEAT_S):
        try:
            store = store or transport.connect_store(address, timeout=HEARTBEAT_S)
            store.add(transport.key(shard, "alive"), 1)
        except (LinkError, RuntimeError):  # the server is down or restarting
            store = None


def serve_link(address: str, ffn: ShardedFFN, stop: threading.Event) -> None:
    """Serve one attention server, reconnecting whenever the link breaks."""
    threading.Thread(target=_heartbeat, args=(address, ffn.shard, stop), daemon=True,
                     name=f"heartbeat-{address}").start()
    while not stop.is_set():
        try:
            store = transport.connect_store(address, timeout=float("inf"))
            generation = store.add(transport.key(ffn.shard, "generation"), 1)
            store.set(transport.key(ffn.shard, f"meta{generation}"), ffn.meta())
            logger.info("shard %d/%d: joining %s (generation %d)", ffn.shard, ffn.shards,
                        address, generation)
            link = Link.join(store, ffn.shard, generation, rank=1, device=ffn.device,
                             timeout=IDLE)
            logger.info("shard %d/%d: serving %s", ffn.shard, ffn.shards, address)
            while not stop.is_set():
                header, work = link.receive((3,), torch.int64, TAG_HEADER)
                Link.wait([work])
                layer, tokens, _ = header.tolist()
                x, work = link.receive((tokens, ffn.hidden), ffn.dtype, TAG_DATA)
                Link.wait([work])
                Link.wait(link.post([ffn(layer, x)], TAG_OUT))
        except (LinkError, RuntimeError) as exc:
            logger.warning("link to %s broke (%s); reconnecting", address,
                           str(exc).splitlines()[0][:200])
            time.sleep(0.5)


def run(model_dir: Path, attention: list[str], shard: int, shards: int, dtype: str,
        device: str) -> int:
    if not 0 <= shard < shards:
        raise ValueError(f"--shard {shard} outside 0..{shards - 1}")
    for address in attention:
        transport.parse_address(address)  # a malformed one fails here, not in its thread
    ffn = ShardedFFN(model_dir, shard, shards, DTYPES[dtype], torch.device(device))
    logger.info("FFN shard %d/%d of %s: %d layers, hidden %d, %s", shard, shards, model_dir,
                ffn.layers, ffn.hidden, dtype)
    stop = threading.Event()
    threads = [threading.Thread(target=serve_link, args=(a, ffn, stop), daemon=True)
               for a in attention]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(1)
    except KeyboardInterrupt:
        stop.set()
    return 0
