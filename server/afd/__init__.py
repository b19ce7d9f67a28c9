"""Attention-FFN disaggregation (AFD).

`longserve serve --afd-role attention` runs the vLLM engine with every decoder layer's FFN
replaced by a call to remote FFN workers (`server.afd.model`); `longserve afd-ffn` runs a
worker that holds a shard of every layer's FFN weights and serves them
(`server.afd.ffn_worker`). The attention server hosts a small key-value store (torch's
TCPStore) where workers announce themselves, rendezvous and send heartbeats; each
(attention server, FFN worker) pair talks over its own two-member torch.distributed
process group (gloo on CPU, NCCL on CUDA; `server.afd.transport`).

Topologies nA:mF: m workers each hold 1/m of every layer's intermediate dimension (the
attention side sums their partial outputs); a worker serves n attention servers, one
link each.
"""

STORE_PREFIX = "longserve-afd"

# worker counters (cache_policies.stats), kept by the engine's worker: per direction,
# layer-exchanges, tokens carried (summed over layers) and bytes moved
KIND = "afd"
FIELDS = ("exchanges", "tokens", "bytes")
