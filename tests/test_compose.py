"""The deployment files are wired together: compose.yaml, the Dockerfile, .dockerignore and Settings.

Docker does not run here, so these read the files as data and check what `docker compose up` relies on:
service names and ports match the URLs the assistant is given, every variable it is given is a real
setting that lands where intended, images are pinned, and start-up order waits on health.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from assistant.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("qdrant", "ollama", "ollama-pull", "assistant")


def _load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\})")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name", "op", "default")
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(sub, value)


def environment(service: dict[str, Any], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment (list or mapping form), interpolated with `env` (default: unset)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: interpolate(str(v), env or {}) for k, v in raw.items()}


def _settings_env_names() -> dict[str, tuple[str, ...]]:
    """Every environment variable Settings reads, mapped to its attribute path."""
    names: dict[str, tuple[str, ...]] = {}
    for field, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseSettings):
            prefix = section.model_config.get("env_prefix", "")
            for sub in section.model_fields:
                names[f"{prefix}{sub}".upper()] = (field, sub)
        else:
            names[field.upper()] = (field,)
    return names


# --- compose.yaml -----------------------------------------------------------------------------------------


def test_the_four_services_exist(services: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(services)


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        image = str(service["image"])
        _repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned"
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["ollama"]["image"].startswith("ollama/ollama:")
    assert services["ollama-pull"]["image"] == services["ollama"]["image"]


def test_qdrant_server_matches_the_client(services: dict[str, Any]) -> None:
    """qdrant-client warns unless the server's minor version is within one of its own."""
    server = tuple(int(p) for p in services["qdrant"]["image"].split(":v")[1].split("."))
    client = tuple(int(p) for p in importlib.metadata.version("qdrant-client").split(".")[:3])
    assert server[0] == client[0] and abs(server[1] - client[1]) <= 1, (server, client)


def test_assistant_is_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    build = services["assistant"]["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_assistant_urls_point_at_the_services(services: dict[str, Any]) -> None:
    env = environment(services["assistant"])
    qdrant = urlsplit(env["QDRANT_URL"])
    assert (qdrant.scheme, qdrant.hostname, qdrant.port) == ("http", "qdrant", 6333)
    # The port the assistant is given is the one the qdrant healthcheck probes.
    assert "/dev/tcp/127.0.0.1/6333" in " ".join(services["qdrant"]["healthcheck"]["test"])
    ollama = urlsplit(env["OLLAMA_HOST"])
    assert (ollama.scheme, ollama.hostname, ollama.port) == ("http", "ollama", 11434)
    assert env["LLM_BACKEND"] == "ollama"
    # The one-shot pull talks to the same server and pulls the model the assistant will ask for.
    pull_env = environment(services["ollama-pull"])
    assert pull_env["OLLAMA_HOST"] == env["OLLAMA_HOST"]


@pytest.mark.parametrize("override", [None, "llama3.2:3b"])
def test_pulled_model_is_the_model_asked_for(services: dict[str, Any], override: str | None) -> None:
    shell_env = {"OLLAMA_MODEL": override} if override else {}
    asked = environment(services["assistant"], shell_env)["OLLAMA_MODEL"]
    pull = services["ollama-pull"]
    argv = [interpolate(str(a), shell_env) for a in [*pull["entrypoint"], *(pull.get("command") or [])]]
    assert argv == ["ollama", "pull", asked]
    expected = override or Settings.model_fields["ollama"].default_factory().model  # type: ignore[misc]
    assert asked == expected


def test_start_up_waits_on_health(services: dict[str, Any]) -> None:
    assert services["assistant"]["depends_on"] == {
        "qdrant": {"condition": "service_healthy"},
        "ollama": {"condition": "service_healthy"},
        "ollama-pull": {"condition": "service_completed_successfully"},
    }
    assert services["ollama-pull"]["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert str(services["ollama-pull"]["restart"]) == "no"


def test_healthchecks(services: dict[str, Any]) -> None:
    for name in ("qdrant", "ollama", "assistant"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not check.get("disable"), name
    # No curl in the qdrant image: bash's /dev/tcp asks /readyz.
    assert services["qdrant"]["healthcheck"]["test"][1:3] == ["bash", "-c"]
    assert "GET /readyz" in services["qdrant"]["healthcheck"]["test"][3]
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    probe = services["assistant"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    port = environment(services["assistant"])["PORT"]
    assert f"http://127.0.0.1:{port}/health" in probe[3]
    compile(probe[3], "<healthcheck>", "exec")


def test_assistant_port_is_published(services: dict[str, Any]) -> None:
    port = environment(services["assistant"])["PORT"]
    assert f"{port}:{port}" in [str(p) for p in services["assistant"]["ports"]]


def test_volumes_are_declared_and_mounted(compose: dict[str, Any], services: dict[str, Any]) -> None:
    mounts: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if not source.startswith((".", "/")):
                mounts.setdefault(name, {})[target] = source
    declared = set(compose.get("volumes") or {})
    used = {source for targets in mounts.values() for source in targets.values()}
    assert used == declared
    assert "/qdrant/storage" in mounts["qdrant"]
    assert "/root/.ollama" in mounts["ollama"]
    assert environment(services["assistant"])["DATA_DIR"] in mounts["assistant"]


def test_assistant_environment_lands_in_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    known = _settings_env_names()
    env = environment(services["assistant"])
    unknown = sorted(set(env) - set(known))
    assert not unknown, f"not Settings fields (typo?): {unknown}"

    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()

    for name, value in env.items():
        landed: Any = settings
        for attr in known[name]:
            landed = getattr(landed, attr)
        assert str(landed) == value, name
    assert settings.store.url == "http://qdrant:6333"
    assert settings.llm.backend == "ollama"
    assert settings.ollama.host == "http://ollama:11434"
    assert settings.ollama.model == "qwen2.5:7b-instruct"
    assert settings.data_dir == Path("/data")
    assert settings.host == "0.0.0.0"
    assert settings.env == "development"  # production beyond loopback would need DATABASE_URL


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker CLI has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["services"]["assistant"]["environment"]["OLLAMA_MODEL"] == "qwen2.5:7b-instruct"


# --- Dockerfile and .dockerignore -------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def test_dockerfile_runs_the_assistant() -> None:
    cmds = [json.loads(rest) for keyword, rest in _instructions() if keyword == "CMD"]
    assert cmds == [["python", "-m", "assistant"]]


def test_python_dash_m_assistant_serves() -> None:
    """The image's CMD and the `finrag-serve` script both need `assistant.__main__.main`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["finrag-serve"] == "assistant.__main__:main"
    assert importlib.util.find_spec("assistant.__main__") is not None, "assistant/__main__.py is missing"


def test_dockerfile_base_user_port_and_offline_hub() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in instructions
    env = _dockerfile_env()
    assert env["HF_HUB_OFFLINE"] == "1"
    # The image's own defaults are valid settings too.
    for name in ("DATA_DIR", "HOST", "PORT"):
        assert name in _settings_env_names()
    assert env["PORT"] == "8000"


def test_dockerfile_installs_cpu_torch_at_the_pinned_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    runs = [rest for keyword, rest in _instructions() if keyword == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if torch_pin in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_at < project_at


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: relative to the context root, `**` spans folders, `*` and `?` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the path (or a folder above it) is left out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    left_out = (".venv", ".git", "data/models/x.gguf", "models/x.gguf", "assistant/__pycache__/a.pyc", ".env")
    for path in left_out:
        assert _dockerignored(path, patterns), path
    copied = []
    for keyword, rest in _instructions():
        if keyword == "COPY":
            copied += [s for s in shlex.split(rest)[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "README.md", "assistant", "ingest", "eval"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), source
    assert not _dockerignored("assistant/prompts/answer_v1.txt", patterns)
