"""The deployment files are wired together: compose.yaml, the Dockerfile, .dockerignore and Settings.

Docker does not run here, so these read the files as data and check what `docker compose up` relies on:
service names and ports match the URLs the assistant is given, every variable it is given is a real
setting that lands where intended, images are pinned, and start-up order waits on health. The "scale"
profile (replicas behind nginx, a Qdrant cluster, PostgreSQL) is checked the same way, its nginx config
included; tests/test_scale_out.py runs its shape for real (two replicas, a shared Qdrant server and database).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from assistant.settings import Settings, UploadSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("qdrant", "ollama", "ollama-pull", "assistant")
SCALE = "scale"
SCALE_SERVICES = ("qdrant-1", "qdrant-2", "qdrant-3", "postgres", "assistant-scale", "ingest-scale", "lb")
QDRANT_NODES = ("qdrant-1", "qdrant-2", "qdrant-3")


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


_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and `$$`."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return env.get(match.group("bare"), "")
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


@dataclass(frozen=True)
class Mount:
    kind: str  # "volume" (named) or "bind"
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any], env: Mapping[str, str] | None = None) -> list[Mount]:
    """A service's volumes, short (`src:dst[:ro]`) or long syntax, sources interpolated with `env`."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = interpolate(str(volume.get("source", "")), env or {})
            out.append(Mount(volume.get("type", "volume"), source, volume["target"], bool(volume.get("read_only"))))
        else:
            source, target, *mode = interpolate(str(volume), env or {}).split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append(Mount(kind, source, target, bool(mode) and "ro" in mode[0].split(",")))
    return out


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """A service's dependencies and their conditions (list form: service_started)."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def started_by_up(services: dict[str, Any], names: tuple[str, ...]) -> set[str]:
    """What `docker compose up NAMES...` starts: the services named and, transitively, their dependencies."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += depends_on(services[name])
    return seen


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings exactly as a container given `env` (and nothing else) reads them."""
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name in _settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


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
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image} has no tag"
        # An exact release, optionally of a named variant (-alpine); PostgreSQL numbers its releases major.minor.
        release = r"\d+\.\d+" if repo == "postgres" else r"v?\d+\.\d+\.\d+"
        assert re.fullmatch(rf"{release}(-[a-z][a-z0-9]*)?", tag), f"{name}: {image} is not pinned"
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["ollama"]["image"].startswith("ollama/ollama:")
    assert services["ollama-pull"]["image"] == services["ollama"]["image"]
    assert re.fullmatch(r"postgres:15\.\d+", services["postgres"]["image"])
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", services["lb"]["image"])


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
    named: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        for mount in mounts(service):
            if mount.kind == "volume":
                named.setdefault(name, {})[mount.target] = mount.source
            else:
                assert mount.kind == "bind" and mount.read_only, f"{name}: {mount} (binds are read-only inputs)"
    declared = set(compose.get("volumes") or {})
    used = {source for targets in named.values() for source in targets.values()}
    assert used == declared
    assert "/qdrant/storage" in named["qdrant"]
    assert "/root/.ollama" in named["ollama"]
    assert environment(services["assistant"])["DATA_DIR"] in named["assistant"]


def landed_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """`env` loaded into Settings: every variable a Settings field, each landing with its value."""
    known = _settings_env_names()
    unknown = sorted(set(env) - set(known))
    assert not unknown, f"not Settings fields (typo?): {unknown}"
    settings = settings_from(env, monkeypatch, tmp_path)
    for name, value in env.items():
        landed: Any = settings
        for attr in known[name]:
            landed = getattr(landed, attr)
        assert str(landed) == value, name
    return settings


def test_assistant_environment_lands_in_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = landed_settings(environment(services["assistant"]), monkeypatch, tmp_path)
    assert settings.store.url == "http://qdrant:6333"
    assert settings.llm.backend == "ollama"
    assert settings.ollama.host == "http://ollama:11434"
    assert settings.ollama.model == "qwen2.5:7b-instruct"
    assert settings.data_dir == Path("/data")
    assert settings.host == "0.0.0.0"
    assert settings.env == "development"  # production beyond loopback would need DATABASE_URL


@pytest.mark.parametrize("profiles", [(), (SCALE,)])
def test_docker_compose_accepts_the_file(profiles: tuple[str, ...]) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker CLI has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), *(f"--profile={p}" for p in profiles), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["services"]["assistant"]["environment"]["OLLAMA_MODEL"] == "qwen2.5:7b-instruct"
    assert set(resolved["services"]) == set(SERVICES) | (set(SCALE_SERVICES) if profiles else set())
    if profiles:
        assert resolved["services"]["assistant-scale"]["deploy"]["replicas"] >= 2
        assert "$remote_addr" in resolved["configs"]["lb-nginx"]["content"]


# --- the "scale" profile: replicas behind nginx, a Qdrant cluster, PostgreSQL ---------------------------------


def test_default_up_is_unchanged_by_the_scale_profile(services: dict[str, Any]) -> None:
    """`docker compose up` starts the four single-host services only; `--profile scale up lb` starts the scaled
    deployment and none of the single-host qdrant and assistant."""
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == set(SERVICES)
    assert {name for name, service in services.items() if service.get("profiles") == [SCALE]} == set(SCALE_SERVICES)
    for name in SERVICES:  # a default service needing a profiled one would not start without the profile
        assert not set(depends_on(services[name])) & set(SCALE_SERVICES), name
    assert started_by_up(services, ("lb",)) == set(SCALE_SERVICES) - {"ingest-scale"} | {"ollama", "ollama-pull"}
    assert started_by_up(services, ("ingest-scale",)) == set(SCALE_SERVICES) - {"lb"} | {"ollama", "ollama-pull"}


def test_scale_profile_runs_the_same_images(services: dict[str, Any]) -> None:
    for node in QDRANT_NODES:
        assert services[node]["image"] == services["qdrant"]["image"], node
    replicas, single = services["assistant-scale"], services["assistant"]
    assert (replicas["build"], replicas["image"]) == (single["build"], single["image"])
    assert services["ingest-scale"]["image"] == replicas["image"] and "build" not in services["ingest-scale"]


def _qdrant_flags(service: dict[str, Any]) -> dict[str, str]:
    argv = [str(a) for a in service["command"]]
    assert argv[0] == "./qdrant" and len(argv) % 2 == 1, argv
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_qdrant_nodes_form_one_cluster(services: dict[str, Any]) -> None:
    first, *others = QDRANT_NODES
    p2p = f"http://{first}:6335"
    assert _qdrant_flags(services[first]) == {"--uri": p2p}  # starts the cluster
    for node in others:  # join through the first; their own URI survives an address change on restart
        assert _qdrant_flags(services[node]) == {"--bootstrap": p2p, "--uri": f"http://{node}:6335"}
        assert depends_on(services[node]) == {first: "service_healthy"}
    storage = set()
    for node in QDRANT_NODES:
        service = services[node]
        assert environment(service)["QDRANT__CLUSTER__ENABLED"] == "true", node
        assert service["healthcheck"] == services["qdrant"]["healthcheck"], node  # GET /readyz on 6333
        [mount] = mounts(service)
        assert (mount.kind, mount.target) == ("volume", "/qdrant/storage"), node
        storage.add(mount.source)
        assert "ports" not in service, node  # reached by the replicas only
    assert len(storage) == len(QDRANT_NODES)  # each node its own storage


@pytest.mark.parametrize("password", [None, "s3cret-Pass_word"])
def test_replicas_log_into_the_postgres_service(services: dict[str, Any], password: str | None) -> None:
    shell_env = {"POSTGRES_PASSWORD": password} if password else {}
    pg = environment(services["postgres"], shell_env)
    url = sa.make_url(environment(services["assistant-scale"], shell_env)["DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    if password:
        assert url.password == password
    else:  # the default says what it is for; README tells to set POSTGRES_PASSWORD
        assert "local" in str(url.password)
    probe = services["postgres"]["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "pg_isready"]
    flags = dict(zip(probe[2::2], probe[3::2], strict=True))
    # TCP, not the socket: the image's first-start initialisation serves the socket only, then restarts.
    assert flags == {"-h": "127.0.0.1", "-p": "5432", "-U": url.username, "-d": url.database}
    [mount] = mounts(services["postgres"])
    assert (mount.kind, mount.target) == ("volume", "/var/lib/postgresql/data")


def test_replicas_are_stateless_and_point_at_the_cluster(services: dict[str, Any]) -> None:
    replicas = services["assistant-scale"]
    assert int(replicas["deploy"]["replicas"]) >= 2
    assert "ports" not in replicas and "container_name" not in replicas  # N copies: neither may be fixed
    env = environment(replicas)
    qdrant = urlsplit(env["QDRANT_URL"])
    assert (qdrant.scheme, qdrant.hostname, qdrant.port) == ("http", QDRANT_NODES[0], 6333)
    assert "/dev/tcp/127.0.0.1/6333" in " ".join(services[QDRANT_NODES[0]]["healthcheck"]["test"])
    single = environment(services["assistant"])
    for name in ("LLM_BACKEND", "OLLAMA_HOST", "OLLAMA_MODEL", "DATA_DIR", "HOST", "PORT"):
        assert env[name] == single[name], name  # the same Ollama and model as the single-host assistant
    assert (env["ENV"], env["HOST"]) == ("production", "0.0.0.0")
    probe = replicas["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"] and f"http://127.0.0.1:{env['PORT']}/health" in probe[3]
    compile(probe[3], "<healthcheck>", "exec")
    # The one-shot ingest is another client of the same cluster and database.
    assert environment(services["ingest-scale"]) == env


def test_replicas_share_data_and_the_corpus_with_the_ingest_job(services: dict[str, Any]) -> None:
    replicas, ingest = services["assistant-scale"], services["ingest-scale"]
    data_dir = environment(replicas)["DATA_DIR"]
    shared = {m.target: m for m in mounts(replicas)}
    assert shared[data_dir].kind == "volume"  # uploads and learned models, one copy for all replicas
    assert shared[data_dir].source != next(m.source for m in mounts(services["assistant"]) if m.target == data_dir)
    assert mounts(ingest) == mounts(replicas)  # the ingest job's paths are the paths the replicas serve files from
    [corpus] = [m for m in mounts(replicas) if m.kind == "bind"]
    assert corpus.read_only and (ROOT / corpus.source).is_dir()  # default: the bundled samples/
    assert mounts(replicas, {"FINRAG_CORPUS": "/srv/filings"})[1].source == "/srv/filings"
    argv = [str(a) for a in ingest["command"]]
    assert argv[:3] == ["python", "-m", "ingest"] and corpus.target in argv[3:]
    assert str(ingest["restart"]) == "no"


@pytest.mark.parametrize("service", ["assistant-scale", "ingest-scale"])
def test_scale_environment_lands_in_settings(
    services: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = environment(services[service])
    settings = landed_settings(env, monkeypatch, tmp_path)

    store = settings.store
    assert store.url == "http://qdrant-1:6333"
    assert store.shards is not None and store.shards >= len(QDRANT_NODES)  # every node holds shards
    assert store.replication_factor == 2 and store.replication_factor <= len(QDRANT_NODES)  # one node may fail
    assert store.write_consistency == 1 and store.write_ordering == "medium"
    assert settings.env == "production" and settings.host == "0.0.0.0"
    assert settings.db_url == env["DATABASE_URL"] and settings.db_url.startswith("postgresql+psycopg://")

    # ENV=production is what makes the shared database required: without it a replica refuses to start.
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ValidationError, match="needs DATABASE_URL"):
        Settings()


def test_scale_start_up_waits_on_health(services: dict[str, Any]) -> None:
    assert depends_on(services["assistant-scale"]) == {
        **dict.fromkeys(QDRANT_NODES, "service_healthy"),
        "postgres": "service_healthy",
        "ollama": "service_healthy",
        "ollama-pull": "service_completed_successfully",
    }
    assert depends_on(services["lb"]) == {"assistant-scale": "service_healthy"}
    # The ingest job starts once a replica is healthy: image built, cluster formed, schema migrated.
    assert depends_on(services["ingest-scale"]) == {"assistant-scale": "service_healthy"}
    for name, service in services.items():  # every condition can be met
        for dependency, condition in depends_on(service).items():
            if condition == "service_healthy":
                assert not services[dependency].get("healthcheck", {}).get("disable"), (name, dependency)
                assert services[dependency].get("healthcheck"), (name, dependency)
            elif condition == "service_completed_successfully":
                assert str(services[dependency].get("restart")) == "no", (name, dependency)
            if services[dependency].get("profiles"):
                assert services[dependency]["profiles"] == service.get("profiles"), (name, dependency)


# --- the load balancer's nginx config -------------------------------------------------------------------------


@dataclass
class Directive:
    """One nginx directive: `name args...;` or `name args... { block }`."""

    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{len(found)} {name!r} in {self.name} {self.args}"
        return found[0]

    def args_of(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[-1].args if found else None


_NGINX_TOKEN = re.compile(r"#[^\n]*|\"[^\"]*\"|'[^']*'|[{};]|[^\s{};#\"']+")


def parse_nginx(text: str) -> Directive:
    root = Directive("main", [], [])
    stack: list[Directive] = [root]
    words: list[str] = []
    for token in _NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            assert words, f"a directive without a name before {token!r}"
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            stack[-1].block.append(directive)  # type: ignore[union-attr]
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    assert len(stack) == 1 and not words, "unterminated block or directive"
    return root


def location_for(server: Directive, uri: str) -> Directive:
    """nginx's choice among prefix locations: an exact `=` match, else the longest matching prefix."""
    locations = server.all("location")
    assert all(loc.args[0] == "=" or loc.args[0].startswith("/") for loc in locations), "regex locations"
    for loc in locations:
        if loc.args[0] == "=" and loc.args[1] == uri:
            return loc
    return max(
        (loc for loc in locations if loc.args[0] != "=" and uri.startswith(loc.args[0])),
        key=lambda loc: len(loc.args[0]),
    )


def _size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


@pytest.fixture(scope="module")
def nginx_text(compose: dict[str, Any]) -> str:
    return str(compose["configs"]["lb-nginx"]["content"])


@pytest.fixture(scope="module")
def nginx(nginx_text: str) -> Directive:
    return parse_nginx(interpolate(nginx_text, {}))


@pytest.fixture(scope="module")
def server(nginx: Directive) -> Directive:
    return nginx.one("server")


def _upstream(nginx: Directive, location: Directive) -> Directive:
    target = urlsplit(location.one("proxy_pass").args[0])
    assert target.scheme == "http" and not target.path, "proxy_pass keeps the request URI as it came"
    return next(u for u in nginx.all("upstream") if u.args == [target.hostname])


def test_lb_serves_the_config_on_its_published_port(
    compose: dict[str, Any], services: dict[str, Any], nginx_text: str, server: Directive
) -> None:
    lb = services["lb"]
    [config] = lb["configs"]
    assert config["source"] in compose["configs"]
    assert config["target"] == "/etc/nginx/conf.d/default.conf"  # included inside http {}, replacing the default
    # Compose interpolates `content`: every nginx `$variable` must be written `$$variable` to reach nginx.
    assert not re.search(r"(?<!\$)\$(?!\$)", nginx_text.replace("$$", "")), "a single $ in the nginx config"
    listen = server.one("listen").args[0]
    assert [str(p) for p in lb["ports"]] == [f"8080:{listen}"]
    assert f"http://127.0.0.1:{listen}/health" in lb["healthcheck"]["test"]


def test_nginx_balances_over_every_replica(nginx: Directive, services: dict[str, Any]) -> None:
    assert nginx.args_of("resolver") == ["127.0.0.11", "valid=5s", "ipv6=off"]  # Docker's DNS, re-read often
    version = tuple(int(p) for p in services["lb"]["image"].split(":")[1].split("-")[0].split("."))
    assert version >= (1, 27, 3), "`server ... resolve` in open-source nginx"
    port = environment(services["assistant-scale"])["PORT"]
    upstreams = nginx.all("upstream")
    assert upstreams
    for upstream in upstreams:
        assert upstream.all("zone"), upstream.args  # resolve needs shared memory
        [entry] = upstream.all("server")
        address, *params = entry.args
        assert address == f"assistant-scale:{port}" and "resolve" in params, upstream.args
        assert "max_fails=1" in params and not {"backup", "down"} & set(params)
    finrag = next(u for u in upstreams if u.args == ["finrag"])
    assert not finrag.all("hash") and not finrag.all("ip_hash")  # round robin
    # nginx must drop an idle connection before uvicorn does, or a request sent on it is lost.
    idle = finrag.args_of("keepalive_timeout")
    assert idle is not None and int(idle[0].rstrip("s")) < uvicorn.Config(app="assistant.app:app").timeout_keep_alive


@pytest.mark.parametrize(
    ("uri", "sticky", "buffered"),
    [
        ("/v1/chat", False, False),  # Server-Sent Events with stream: true
        ("/v1/chat/completions", False, False),
        ("/v1/retrieve", False, True),
        ("/v1/feedback", False, True),
        ("/health", False, True),
        ("/v1/documents/abc/file", False, True),
        ("/v1/documents", True, True),  # uploads: their jobs live in one replica's memory
        ("/v1/ingest/jobs/abc", True, True),
    ],
)
def test_nginx_routes(nginx: Directive, server: Directive, uri: str, sticky: bool, buffered: bool) -> None:
    location = location_for(server, uri)
    upstream = _upstream(nginx, location)
    assert bool(upstream.all("hash")) is sticky, uri
    buffering = location.args_of("proxy_buffering") or server.args_of("proxy_buffering") or ["on"]
    assert (buffering == ["on"]) is buffered, uri


def test_nginx_never_sends_a_request_twice(server: Directive) -> None:
    """A replica that is down is skipped, but a POST (an answer, a vote) that reached one is never re-sent."""
    retry = server.args_of("proxy_next_upstream")
    assert retry is not None and set(retry) <= {"error", "timeout"} and "non_idempotent" not in retry
    # Keep-alive to the replicas: HTTP/1.1 and no "Connection: close" passed on.
    assert server.args_of("proxy_http_version") == ["1.1"]
    assert server.args_of("proxy_set_header") is not None
    assert ["Connection", ""] in [d.args for d in server.all("proxy_set_header")]
    # An upload as large as the assistant accepts gets through; the assistant checks each file itself.
    fields = UploadSettings.model_fields
    limit = _size((server.args_of("client_max_body_size") or ["1m"])[0])
    assert limit >= fields["max_mb"].default * 10**6 * fields["max_files"].default


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
