"""vLLM worker classes that hand each step's KV-policy plan to the runtime before the
model runs (`--worker-cls`; `engine.py` picks the class for the platform)."""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from attention_backends.sparse.stats import SPARSE_STATS
from cache_policies.runtime import RUNTIME

class PolicyWorkerMixin:
    def execute_model(self, scheduler_output):
        RUNTIME.begin_step(scheduler_output, self.model_runner)  # type: ignore[attr-defined]
        try:
            return super().execute_model(scheduler_output)  # type: ignore[misc]
        finally:  # passes outside a scheduled step (warm-up, profiling) see no plan
            RUNTIME.end_step()
            SPARSE_STATS.flush(force=True)  # changes only in sparse prefill steps


class PolicyCPUWorker(PolicyWorkerMixin, CPUWorker):
    pass


class PolicyGPUWorker(PolicyWorkerMixin, Worker):
    pass
