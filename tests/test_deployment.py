"""The Docker deployment of a team GPU box, checked statically (no Docker engine): docker-compose.yml, the two
Dockerfiles, .dockerignore, .env.example and pyproject.toml, read as YAML, TOML and plain text."""

import json
import re
import shlex
import tomllib
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE_API = REPO / "Dockerfile.api"
DOCKERFILE_GPU = REPO / "Dockerfile.gpu"
DOCKERFILES = (DOCKERFILE_API, DOCKERFILE_GPU)
SOURCE_PACKAGES = ("api", "shared", "worker", "ftq")

# A key whose value is a credential: it may only come from `${VAR}` interpolation or an env_file.
SECRET_NAME = re.compile(r"TOKEN|KEY|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)
# `${VAR}`, `${VAR:?message}` or `${VAR?message}` (and `${VAR:-}` with an empty default): no literal fallback.
SECRET_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*|:?-)?\}")
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]*)@")
TEAM_TOKENS = ("HF_TOKEN", "WANDB_API_KEY")
MIN_WORKER_GRACE_S = 60.0  # the worker's own drain budget (ftq.stack.STOP_GRACE_S): a checkpoint must fit in it


# --- docker-compose.yml -------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def service(name: str) -> dict[str, Any]:
    assert name in services(), f"docker-compose.yml has no service {name!r}"
    return services()[name]


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) if "=" in item else [item, ""] for item in env]
        return dict(pairs)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def env_files(svc: dict[str, Any]) -> list[str]:
    files = svc.get("env_file") or []
    if isinstance(files, str):
        files = [files]
    return [item["path"] if isinstance(item, dict) else str(item) for item in files]


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):  # the short form waits for nothing but the start
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def dockerfile_of(svc: dict[str, Any]) -> str | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return "Dockerfile"
    return str(build.get("dockerfile", "Dockerfile"))


def gpu_devices(svc: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = svc.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [dev for dev in reservations.get("devices", []) if dev.get("driver") == "nvidia"]


def gpu_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if gpu_devices(svc)}


def one_shot_services() -> set[str]:
    """Services something waits on to complete: they run once and exit."""
    return {
        dep
        for svc in services().values()
        for dep, condition in depends_on(svc).items()
        if condition == "service_completed_successfully"
    }


def long_running_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if name not in one_shot_services()}


def ftq_services() -> dict[str, dict[str, Any]]:
    """Services that run the ftq code (built from one of the repo's Dockerfiles)."""
    return {name: svc for name, svc in services().items() if dockerfile_of(svc) is not None}


def strings_in(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*strings_in(key), *strings_in(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings_in(item)]
    return []


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration.replace(" ", ""), f"unparsed duration {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


def healthcheck_text(svc: dict[str, Any]) -> str:
    test = svc.get("healthcheck", {}).get("test", [])
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


# --- Dockerfiles, .env.example, .dockerignore, pyproject.toml ------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def args_of(arguments: str) -> list[str]:
    """An instruction's arguments, exec (JSON) form or shell form."""
    if arguments.startswith("["):
        parsed = json.loads(arguments)
        assert isinstance(parsed, list)
        return [str(part) for part in parsed]
    return shlex.split(arguments)


def copy_sources(path: Path) -> list[str]:
    sources: list[str] = []
    for instruction, arguments in instructions(path):
        if instruction in ("COPY", "ADD"):
            parts = [part for part in args_of(arguments) if not part.startswith("--")]
            if any(part.startswith("--from") for part in args_of(arguments)):
                continue  # from another stage, not from the build context
            sources += parts[:-1]
    return sources


def runs(path: Path) -> list[str]:
    return [arguments for instruction, arguments in instructions(path) if instruction == "RUN"]


def final(path: Path, name: str) -> str:
    found = [arguments for instruction, arguments in instructions(path) if instruction == name]
    assert found, f"{path.name} has no {name}"
    return found[-1]


def env_example() -> dict[str, str]:
    """The uncommented NAME=value lines of .env.example."""
    values: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


def ignore_patterns(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith(("#", "!"))]


def dockerignored(path: str) -> bool:
    """True when `path` or a folder above it is excluded from the build context (negations not modelled)."""
    parts = Path(path.removeprefix("./")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in ignore_patterns(".dockerignore"):
        pattern = pattern.strip("/")
        variants = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch(candidate, variant) for candidate in candidates for variant in variants):
            return True
    return False


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


# --- compose topology ------------------------------------------------------------------------------------------------


def test_compose_runs_postgres_redis_migrate_api_validator_and_a_gpu_worker() -> None:
    assert {"postgres", "redis", "migrate", "api", "validator", "worker"} <= set(services())
    assert one_shot_services() == {"migrate"}


def test_every_long_running_service_has_a_healthcheck_or_waits_for_healthy_dependencies() -> None:
    for name, svc in long_running_services().items():
        waits_on_healthy = any(condition == "service_healthy" for condition in depends_on(svc).values())
        assert "healthcheck" in svc or waits_on_healthy, f"{name}: no healthcheck and no healthy dependency"
        assert not svc.get("healthcheck", {}).get("disable", False), f"{name}: healthcheck disabled"


def test_long_running_services_restart_unless_stopped_and_migrate_runs_once() -> None:
    for name, svc in long_running_services().items():
        assert svc.get("restart") == "unless-stopped", f"{name} restarts {svc.get('restart')!r}"
    # A restart policy on a one-shot would rerun it forever, and its dependants would never see it complete.
    assert service("migrate").get("restart", "no") == "no"


def test_api_workers_and_validator_wait_for_healthy_postgres_and_redis_and_a_completed_migration() -> None:
    waiting = {"api", "validator", *gpu_workers()}
    assert "worker" in waiting
    for name in waiting:
        deps = depends_on(service(name))
        assert deps.get("postgres") == "service_healthy", f"{name} -> postgres: {deps.get('postgres')}"
        assert deps.get("redis") == "service_healthy", f"{name} -> redis: {deps.get('redis')}"
        assert deps.get("migrate") == "service_completed_successfully", f"{name} -> migrate: {deps.get('migrate')}"


def test_migrate_is_a_one_shot_ftq_migrate_on_the_api_image_after_postgres_is_healthy() -> None:
    migrate = service("migrate")
    assert command(migrate) == ["ftq", "migrate"]
    assert dockerfile_of(migrate) == "Dockerfile.api"
    assert depends_on(migrate).get("postgres") == "service_healthy"
    assert "DATABASE_URL" in environment(migrate)


def test_postgres_and_redis_healthchecks_probe_the_servers() -> None:
    assert "pg_isready" in healthcheck_text(service("postgres"))
    redis_check = healthcheck_text(service("redis"))
    assert "redis-cli" in redis_check and "ping" in redis_check


def test_redis_persists_every_write_and_never_evicts_a_task() -> None:
    redis = service("redis")
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", [])), "the AOF must be on a volume"


def test_gpu_worker_reserves_one_nvidia_gpu_and_runs_ftq_worker_gpu_on_it() -> None:
    workers = gpu_workers()
    assert "worker" in workers
    assert [dev.get("device_ids") for dev in gpu_devices(workers["worker"])] == [["0"]]
    for name, svc in workers.items():
        (device,) = gpu_devices(svc)
        assert "gpu" in device.get("capabilities", []), name
        assert "count" not in device, f"{name}: count and device_ids exclude each other"
        ids = [str(i) for i in device.get("device_ids", [])]
        assert len(ids) == 1, f"{name} must reserve exactly one GPU, reserves {ids}"
        # The NVIDIA runtime shows a container only its reserved GPU, always as index 0: `--gpu 0` is that GPU,
        # whatever the host index; `--gpu N` for N > 0 would see no GPU and train on the CPU.
        assert command(svc) == ["ftq", "worker", "--gpu", "0"], f"{name}: {command(svc)}"
        assert svc.get("hostname") == f"ftq-gpu{ids[0]}", f"{name}: the worker's name should tell its host GPU"


def test_gpu_workers_reserve_distinct_gpus_and_leave_cuda_visible_devices_to_ftq() -> None:
    ids = [str(i) for svc in gpu_workers().values() for dev in gpu_devices(svc) for i in dev.get("device_ids", [])]
    assert len(ids) == len(set(ids)), f"two GPU workers share a GPU: {ids}"
    for name, svc in gpu_workers().items():
        assert "CUDA_VISIBLE_DEVICES" not in environment(svc), f"{name}: `ftq worker --gpu` sets it"
        assert "NVIDIA_VISIBLE_DEVICES" not in environment(svc), f"{name}: the reservation sets it"


def test_gpu_workers_have_a_stop_grace_period_long_enough_to_save_a_checkpoint() -> None:
    for name, svc in gpu_workers().items():
        assert seconds(svc.get("stop_grace_period", "10s")) > MIN_WORKER_GRACE_S, name
        assert svc.get("init") is True, f"{name}: an init forwards SIGTERM and reaps the trainers' processes"


def test_validator_runs_ftq_worker_validate_on_the_gpu_image_without_a_gpu() -> None:
    validator = service("validator")
    assert command(validator) == ["ftq", "worker", "--validate"]
    assert dockerfile_of(validator) == "Dockerfile.gpu", "validation tokenizes: it needs the worker extra"
    assert not gpu_devices(validator)
    assert environment(validator).get("CUDA_VISIBLE_DEVICES") == ""


def test_api_is_built_from_dockerfile_api_and_health_checked_on_healthz() -> None:
    api = service("api")
    assert dockerfile_of(api) == "Dockerfile.api"
    assert command(api) == ["ftq", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert any(str(port).endswith(":8000") for port in api.get("ports", []))
    check = healthcheck_text(api)
    assert "urllib" in check and "/healthz" in check and ":8000" in check
    assert "curl" not in check and "wget" not in check, "the slim image has neither"


def test_services_naming_one_image_build_it_from_one_dockerfile() -> None:
    built: dict[str, str | None] = {}
    for name, svc in services().items():
        if "image" in svc and "build" in svc:
            image = str(svc["image"])
            assert built.setdefault(image, dockerfile_of(svc)) == dockerfile_of(svc), f"{name}: {image}"
    for svc in ftq_services().values():
        build = svc["build"]
        assert isinstance(build, dict) and build.get("context") == ".", "build from the repo root"
        assert (REPO / str(dockerfile_of(svc))).is_file()


def test_ftq_services_share_one_configuration_and_the_data_volume() -> None:
    postgres_env = environment(service("postgres"))
    expected = environment(service("api"))
    database = expected["DATABASE_URL"]
    assert database.startswith(f"postgresql+psycopg://{postgres_env['POSTGRES_USER']}:")
    assert database.endswith(f"@postgres:5432/{postgres_env['POSTGRES_DB']}")
    assert expected["BROKER_URL"] == "redis://redis:6379/0"
    assert expected["FTQ_DATA_DIR"] == "/data"
    for name, svc in ftq_services().items():
        env = environment(svc)
        for key in ("DATABASE_URL", "BROKER_URL", "FTQ_DATA_DIR", "FTQ_SECRET_KEY"):
            assert env.get(key) == expected[key], f"{name}: {key}"
        if name not in one_shot_services():
            assert "ftqdata:/data" in svc.get("volumes", []), f"{name} must see the shared data volume at /data"


def test_no_secret_value_is_written_literally_in_compose() -> None:
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert SECRET_REFERENCE.fullmatch(value), f"{name}: {key} must come from ${{...}} or an env_file"
        for key in (svc.get("build") or {}).get("args", {}) if isinstance(svc.get("build"), dict) else {}:
            assert not SECRET_NAME.search(str(key)), f"{name}: build arg {key} would stay in the image history"
    for text in strings_in(compose()):
        for password in URL_PASSWORD.findall(text):
            assert SECRET_REFERENCE.fullmatch(password), f"literal password in URL {text!r}"


def test_only_workers_receive_the_team_tokens() -> None:
    # GPU workers load the whole .env; the validator gets only HF_TOKEN (it reads gated tokenizers and
    # private datasets); the API and migrate get neither token.
    for name, svc in services().items():
        if name in gpu_workers():
            assert env_files(svc) == [".env"], f"{name}: the team-wide HF/W&B tokens come from .env"
            continue
        assert not env_files(svc), f"{name} must get named variables only, not the whole .env"
        allowed = {"HF_TOKEN"} if name == "validator" else set()
        for token in TEAM_TOKENS:
            if token not in allowed:
                assert token not in environment(svc), f"{name} must not receive {token}"
    assert environment(service("validator"))["HF_TOKEN"] == "${HF_TOKEN:-}"


# --- images ------------------------------------------------------------------------------------------------------


def test_dockerfile_api_is_slim_and_installs_only_the_base_dependencies() -> None:
    assert final(DOCKERFILE_API, "FROM").split()[0] == "python:3.11-slim"
    text = " ".join(runs(DOCKERFILE_API))
    assert "[worker]" not in text and "torch" not in text.lower()
    assert "optional-dependencies" not in text, "the dependency layer must read only [project].dependencies"
    assert re.search(r"pip install (\S+ )*\.(\s|$)", text), "installs the project itself"


def test_dockerfile_api_runs_ftq_api_as_non_root_with_a_healthz_healthcheck() -> None:
    assert args_of(final(DOCKERFILE_API, "CMD")) == ["ftq", "api", "--host", "0.0.0.0", "--port", "8000"]
    healthcheck = final(DOCKERFILE_API, "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert final(DOCKERFILE_API, "USER").split(":")[0] not in ("root", "0")


def test_dockerfile_gpu_is_a_cuda_runtime_image_installing_the_worker_extra_as_non_root() -> None:
    base = final(DOCKERFILE_GPU, "FROM").split()[0]
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-(cudnn-)?runtime-ubuntu\d+\.\d+", base), base
    text = " ".join(runs(DOCKERFILE_GPU))
    assert ".[worker,gpu]" in text
    assert "extras['worker'] + extras['gpu']" in text, "the dependency layer must hold the training stack and Liger"
    assert final(DOCKERFILE_GPU, "USER").split(":")[0] not in ("root", "0")
    assert args_of(final(DOCKERFILE_GPU, "CMD"))[:2] == ["ftq", "worker"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_dependencies_before_copying_the_source(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    first_source = min(
        i
        for i, (instruction, arguments) in enumerate(steps)
        if instruction == "COPY" and set(args_of(arguments)[:-1]) & set(SOURCE_PACKAGES)
    )
    dependencies = [i for i, (inst, args) in enumerate(steps) if inst == "RUN" and "pip install -r" in args]
    assert dependencies and dependencies[0] < first_source, "the dependency layer must come before the source"
    copied = [src for inst, args in steps[: dependencies[0]] if inst == "COPY" for src in args_of(args)[:-1]]
    assert copied == ["pyproject.toml"], f"only pyproject.toml may come before the dependency layer: {copied}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_dockerfile_copy_source_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    sources = copy_sources(dockerfile)
    assert set(SOURCE_PACKAGES) <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert not dockerignored(source), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_bake_in_no_secret(dockerfile: Path) -> None:
    for instruction, arguments in instructions(dockerfile):
        if instruction in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments) or [arguments.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), f"{dockerfile.name}: {instruction} {name}"
        if instruction in ("COPY", "ADD"):
            assert not any(src.startswith(".env") for src in args_of(arguments)[:-1]), dockerfile.name
    for source in copy_sources(dockerfile):
        assert source not in (".", "./"), f"{dockerfile.name} copies the whole context"


def test_pyproject_pins_the_training_stack_and_keeps_it_out_of_the_base_dependencies() -> None:
    project = pyproject()["project"]
    worker = project["optional-dependencies"]["worker"] + project["optional-dependencies"]["gpu"]
    assert {"torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel"} <= {package_name(r) for r in worker}
    for requirement in worker:
        assert re.fullmatch(r"[A-Za-z0-9._-]+(\[[^\]]+\])?==[0-9][A-Za-z0-9.+!-]*", requirement), requirement
    base = {package_name(r) for r in project["dependencies"]}
    assert not base & {package_name(r) for r in worker}, "the API image installs the base dependencies only"


# --- secrets files ---------------------------------------------------------------------------------------------------


def test_env_example_names_every_variable_compose_interpolates() -> None:
    interpolated = {name for text in strings_in(compose()) for name in INTERPOLATION.findall(text)}
    assert {"POSTGRES_PASSWORD", "FTQ_SECRET_KEY"} <= interpolated
    missing = interpolated - set(env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert set(TEAM_TOKENS) <= set(env_example()), "the GPU worker's tokens are documented too"


def test_env_example_holds_no_secret_and_tells_how_to_make_the_fernet_key() -> None:
    for name, value in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must leave {name} empty, not {value!r}"
    text = (REPO / ".env.example").read_text()
    assert "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" in text


def test_dotenv_is_kept_out_of_the_docker_build_context() -> None:
    assert dockerignored(".env")
    for path in (".git", ".venv", ".ftq-data", ".pytest_cache", ".mypy_cache", "api/__pycache__"):
        assert dockerignored(path), path


def test_dotenv_is_gitignored() -> None:
    assert {".env", "/.env", ".env*", "/.env*", "*.env"} & set(ignore_patterns(".gitignore"))
