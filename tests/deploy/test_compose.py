"""The compose stack (deploy/compose.yaml), the Dockerfile and what they mount, checked
without a Docker engine (none runs here; see RELIABILITY.md for the image build):

- the compose file, interpolated as `docker compose` does, parses under the strict
  compose_spec parser (unknown keys, bad ports, durations and images are errors);
- the longserve services' environment is settings the server accepts;
- Prometheus' configuration passes the real `promtool check config`;
- Grafana's provisioning points at the dashboard the stack mounts;
- every file the Dockerfile copies exists and is not excluded by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMTOOL = Path(sys.executable).parent.parent / "prometheus" / "usr" / "bin" / "promtool"
ENV = {"LONGSERVE_API_KEY": "compose-test-key"}


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match):
        name, op, arg = match.groups()
        if op == ":?" and not env.get(name):
            raise KeyError(f"{name}: {arg}")
        return env.get(name) or (arg if op == ":-" else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value)


def compose(env=ENV) -> dict:
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the << merges
    return interpolate({k: v for k, v in raw.items() if not k.startswith("x-")}, env)


def test_compose_file_is_valid_under_the_compose_spec():
    from compose_spec import PyCompose

    spec = compose()
    parsed = PyCompose.from_json(json.dumps(spec))
    assert set(parsed.service_names()) == {"longserve-gpu", "longserve-cpu", "redis",
                                           "prometheus", "grafana"}
    broken = json.loads(json.dumps(spec))
    broken["services"]["redis"]["helthcheck"] = {}  # the parser is strict
    with pytest.raises(ValueError):
        PyCompose.from_json(json.dumps(broken))
    with pytest.raises(KeyError, match="LONGSERVE_API_KEY"):
        compose(env={})  # the key is required, not silently empty


def test_both_profiles_serve_the_same_settings(monkeypatch):
    from server.settings import Settings

    services = compose()["services"]
    gpu, cpu = services["longserve-gpu"], services["longserve-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["build"]["args"]["VARIANT"] == "gpu" and cpu["build"]["args"]["VARIANT"] == "cpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "deploy" not in cpu
    for service in (gpu, cpu):
        assert service["networks"]["default"]["aliases"] == ["longserve"]  # what is scraped
        assert service["shm_size"] == "2gb"  # vLLM needs 160 MiB of /dev/shm at start
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        for name, value in service["environment"].items():
            monkeypatch.setenv(name, str(value))
        settings = Settings()
        assert settings.rate_limit_store == "redis://redis:6379/2"
        assert settings.chunk_store == "redis://redis:6379/0"
        assert settings.api_keys() == [ENV["LONGSERVE_API_KEY"]]
        grace = service["stop_grace_period"]
        assert int(grace.removesuffix("s")) > settings.drain_seconds


def test_mounted_files_exist_and_prometheus_config_checks(tmp_path):
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts a missing {source}"
    assert PROMTOOL.exists(), f"{PROMTOOL} missing: run `bash deploy/install.sh --dev`"
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/run/secrets/longserve_api_key" in config  # compose mounts secrets there
    assert services["prometheus"]["secrets"] == ["longserve_api_key"]
    assert compose()["secrets"]["longserve_api_key"] == {"environment": "LONGSERVE_API_KEY"}
    (tmp_path / "key").write_text("k")
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/run/secrets/longserve_api_key", str(tmp_path / "key")))
    proc = subprocess.run([str(PROMTOOL), "check", "config", str(local)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "longserve:8000" in config


def test_grafana_provisions_the_mounted_dashboard():
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    dashboards = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/longserve.yaml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert mounts["./grafana/longserve.json"] == f"{folder}/longserve.json"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    assert sources["datasources"][0]["type"] == "prometheus"  # the dashboard's variable


def dockerignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or \
                fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            return True
    return False


def test_dockerfile_copies_what_exists_and_runs_unprivileged():
    lines = (REPO / "Dockerfile").read_text().splitlines()
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    assert copies
    for args in copies:
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY of a missing {source}"
            assert not dockerignored(source, ignore), f"{source} is in .dockerignore"
    assert dockerignored(".venv", ignore) and dockerignored(".git", ignore)
    stages = {m.group(1) for line in lines if (m := re.match(r"FROM \S+ AS (\S+)", line))}
    assert {"base-gpu", "base-cpu"} <= stages and "FROM base-${VARIANT}" in lines
    final = lines[lines.index("FROM base-${VARIANT}"):]
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[0] == "USER longserve"  # before any install step
    first_run = next(i for i, line in enumerate(final) if "install.sh" in line)
    assert final.index(users[0]) < first_run
    assert any(line.startswith("HEALTHCHECK") for line in final)
    health = " ".join(final[[i for i, line in enumerate(final)
                             if line.startswith("HEALTHCHECK")][0]:][:2])
    assert '"longserve", "health", "--ready"' in health
    assert 'ENTRYPOINT ["longserve", "serve"]' in final
    install = (DEPLOY / "install.sh").read_text()
    assert "--engine-only" in install and "LONGSERVE_FLAVOUR" in install


@pytest.mark.engine
def test_health_command_answers_for_the_image(server):
    """The HEALTHCHECK's command against a live server: 0 when ready, 1 when nothing
    listens."""
    port = server.url.rsplit(":", 1)[1]
    longserve = Path(sys.executable).parent / "longserve"
    ok = subprocess.run([str(longserve), "health", "--ready", "--port", port], timeout=60)
    assert ok.returncode == 0
    from loadtests.servers import free_port

    down = subprocess.run([str(longserve), "health", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "Connection refused" in down.stderr
