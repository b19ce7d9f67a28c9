"""The Helm chart, rendered by the real Helm engine (deploy/install_helm.py puts the
official binary in the venv) and checked against the Kubernetes API schemas
(kubernetes-validate, bundled) and against the server itself: the ConfigMap the chart
renders must be settings `longserve serve` accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "longserve"
HELM = Path(sys.executable).parent / "helm"
KUBE_VERSION = "1.30.0"

FULL = ["--set", "gpu.count=2", "--set", "apiKey.value=s3cret", "--set", "redis.enabled=true",
        "--set", "redis.kvOffload=true", "--set", "serviceMonitor.enabled=true",
        "--set", "autoscaling.enabled=true", "--set", "server.kvPolicy=snapkv",
        "--set-json", "server.kvBudget=0.3", "--set", "server.maxModelLen=131072",
        "--set-json", 'server.extraArgs=["--dtype", "bfloat16"]',
        "--set", "rateLimit.requestsPerMinute=600", "--set", "rateLimit.tokensPerMinute=200000",
        "--set", "server.maxQueuedTokens=500000", "--set-json", "server.queueTimeout=90.5"]


def helm(*args: str) -> subprocess.CompletedProcess:
    assert HELM.exists(), f"{HELM} missing: run `bash deploy/install.sh --dev`"
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/longserve-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/longserve-helm/config",
           "HELM_DATA_HOME": "/tmp/longserve-helm/data"}
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def render(*values: str) -> dict[str, dict]:
    proc = helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *values)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_chart_lints_strictly():
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", [[], FULL, ["--set", "gpu.count=0"]],
                         ids=["defaults", "everything-on", "cpu"])
def test_every_manifest_matches_the_kubernetes_schemas(values):
    import kubernetes_validate

    docs = render(*values)
    for name, doc in docs.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no bundled schema (checked by the next test)
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    kinds = sorted(n.split("/")[0] for n in docs)
    if values == FULL:
        assert kinds == ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler",
                         "Secret", "Service", "Service", "ServiceMonitor"]
    else:
        assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_the_pieces_fit_together():
    docs = render(*FULL)
    deployment, service = docs["Deployment/rel-longserve"], docs["Service/rel-longserve"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    redis_pod = docs["Deployment/rel-longserve-redis"]["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= redis_pod.items()  # not served by redis
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["serve", "--tensor-parallel-size", "2", "--dtype", "bfloat16"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    probes = {k: container[k]["httpGet"]["path"]
              for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": "/health", "livenessProbe": "/health",
                      "readinessProbe": "/ready"}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 300
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    key = container["env"][0]["valueFrom"]["secretKeyRef"]
    secret = docs[f"Secret/{key['name']}"]
    assert secret["data"][key["key"]] == "czNjcmV0"  # base64 of s3cret
    monitor = docs["ServiceMonitor/rel-longserve"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": key["name"], "key": key["key"]}
    hpa = docs["HorizontalPodAutoscaler/rel-longserve"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-longserve"
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    cpu = render("--set", "gpu.count=0")["Deployment/rel-longserve"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)


@pytest.mark.parametrize("values", [[], FULL], ids=["defaults", "everything-on"])
def test_the_configmap_is_settings_the_server_accepts(values, monkeypatch):
    from server.settings import Settings

    data = render(*values)["ConfigMap/rel-longserve"]["data"]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LONGSERVE_API_KEY", "from-the-secret")
    settings = Settings()
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    assert settings.default_max_tokens == 2048
    assert settings.drain_seconds == 300 - 10 - 15  # grace period - preStop - shutdown
    if values == FULL:
        assert (settings.kv_policy, settings.kv_budget) == ("snapkv", 0.3)
        assert settings.max_model_len == 131072
        assert settings.chunk_store == "redis://rel-longserve-redis:6379/0"
        assert settings.kv_offload == "redis://rel-longserve-redis:6379/1"
        assert settings.rate_limit_store == "redis://rel-longserve-redis:6379/2"
        assert (settings.rate_limit_rpm, settings.rate_limit_tpm) == (600, 200000)
        assert (settings.max_queued_tokens, settings.queue_timeout) == (500000, 90.5)
        assert settings.api_keys() == ["from-the-secret"]
    else:
        assert settings.rate_limit_rpm == settings.rate_limit_tpm == 0
        assert settings.rate_limit_store == "memory"


@pytest.mark.parametrize("value, fragment", [
    ("server.kvPolicy=bogus", "server.kvPolicy"),
    ("gpu.count=-1", "gpu.count"),
    ("server.kvBudget=1.5", "server.kvBudget"),
    ("server.maxNumSeqs=many", "server.maxNumSeqs"),
    ("server.typo=1", "typo"),
    ("service.port=70000", "service.port"),
    ("rateLimit.requestsPerMinute=-5", "rateLimit.requestsPerMinute"),
])
def test_the_values_schema_rejects_bad_values(value, fragment):
    proc = helm("template", "rel", str(CHART), "--set", value)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert fragment in proc.stderr, proc.stderr


def test_the_schema_names_what_the_server_registers():
    from cache_policies.registry import policy_names
    from server.context.registry import strategy_names

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["server"]
    assert schema["properties"]["kvPolicy"]["enum"] == policy_names()
    assert schema["properties"]["contextStrategy"]["enum"] == strategy_names()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["server"]) == set(schema["properties"])


AFD = ["--set", "afd.enabled=true", "--set", "replicaCount=2", "--set", "afd.ffnWorkers=2"]


def test_afd_renders_both_roles(monkeypatch):
    import kubernetes_validate

    from server.settings import Settings

    docs = render(*AFD)
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    attention, ffn = docs["StatefulSet/rel-longserve"], docs["StatefulSet/rel-longserve-ffn"]
    headless = docs["Service/rel-longserve-afd"]
    assert attention["spec"]["serviceName"] == ffn["spec"]["serviceName"] == "rel-longserve-afd"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= \
        attention["spec"]["template"]["metadata"]["labels"].items()
    assert not headless["spec"]["selector"].items() <= \
        ffn["spec"]["template"]["metadata"]["labels"].items()
    assert ffn["spec"]["replicas"] == 2 and attention["spec"]["replicas"] == 2
    port = {p["name"]: p["containerPort"]
            for p in attention["spec"]["template"]["spec"]["containers"][0]["ports"]}["afd"]
    command = ffn["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert ("--attention rel-longserve-0.rel-longserve-afd:29600,"
            "rel-longserve-1.rel-longserve-afd:29600") in command and port == 29600
    assert '--shard "${HOSTNAME##*-}"' in command and "--shards 2" in command
    assert "--device cuda" in command
    for name, value in docs["ConfigMap/rel-longserve"]["data"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.afd_role, settings.afd_ffn_workers, settings.afd_port) == \
        ("attention", 2, 29600)
    assert "Deployment/rel-longserve" not in docs and "--device cpu" in render(
        *AFD, "--set", "afd.ffn.gpu=0")["StatefulSet/rel-longserve-ffn"]["spec"]["template"][
            "spec"]["containers"][0]["args"][0]


def test_afd_refuses_autoscaling():
    proc = helm("template", "rel", str(CHART), *AFD, "--set", "autoscaling.enabled=true")
    assert proc.returncode != 0 and "autoscaling" in proc.stderr


def test_artifacts_on_a_volume_reach_the_server_and_the_ffn_workers(tmp_path, monkeypatch):
    """CSKV bases and a REFRAG projection on a volume: the volume is mounted in the server
    pods (and in the FFN workers', which read the model from it too), and the ConfigMap
    names the artifacts as settings the server accepts (real artifacts, checked by the
    server's own validators)."""
    import kubernetes_validate

    from server.settings import Settings
    from tests.cache_policies.test_cskv import artifact
    from tests.test_rag import small_projection

    artifact(tmp_path / "cskv")
    small_projection(tmp_path / "refrag")
    volume = {"name": "artifacts", "persistentVolumeClaim": {"claimName": "art"}}
    mount = {"name": "artifacts", "mountPath": str(tmp_path), "readOnly": True}
    values = ["--set-json", f"volumes=[{json.dumps(volume)}]",
              "--set-json", f"volumeMounts=[{json.dumps(mount)}]",
              "--set", f"server.cskv={tmp_path / 'cskv'}", "--set", "server.kvPolicy=cskv8",
              "--set", f"server.ragProjection={tmp_path / 'refrag'}"]
    for extra, pods in (([], ["Deployment/rel-longserve"]),
                        (AFD, ["StatefulSet/rel-longserve", "StatefulSet/rel-longserve-ffn"])):
        docs = render(*values, *extra)
        for doc in docs.values():
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        for name in pods:
            spec = docs[name]["spec"]["template"]["spec"]
            assert volume in spec["volumes"], name
            assert mount in spec["containers"][0]["volumeMounts"], name
    for name, value in docs["ConfigMap/rel-longserve"]["data"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.cskv, settings.rag_projection, settings.kv_policy) == \
        (str(tmp_path / "cskv"), str(tmp_path / "refrag"), "cskv8")
    proc = helm("template", "rel", str(CHART), "--set-json", 'volumeMounts=[{"name": "x"}]')
    assert proc.returncode != 0 and "volumeMounts" in proc.stderr
