"""Local model and dataset paths: read only under the allowed roots, checked before anything opens them."""

import os
from pathlib import Path

from shared.errors import InvalidInput
from shared.spec import JobSpec, is_file_id, is_job_id, is_local_path

DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def resolve_under_roots(ref: str, roots: list[Path], *, param: str) -> Path:
    """Resolve `ref` (symlinks included) and refuse it unless it lies under one of `roots`."""
    path = Path(os.path.realpath(Path(ref).expanduser()))
    for root in roots:
        if os.path.commonpath([root, path]) == str(root):
            return path
    allowed = ", ".join(str(r) for r in roots)
    raise InvalidInput(f"{ref!r} is outside the allowed local roots ({allowed})", code="path_not_allowed", param=param)


def check_local_model(ref: str, roots: list[Path], *, param: str = "base_model") -> Path:
    """A local base model (or adapter) must be an existing directory under an allowed root."""
    path = resolve_under_roots(ref, roots, param=param)
    if not path.is_dir():
        what, code = ("adapter", "adapter_not_found") if param == "adapter" else ("model", "model_not_found")
        raise InvalidInput(f"{what} directory {ref!r} does not exist", code=code, param=param)
    return path


def check_local_dataset(ref: str, roots: list[Path], *, param: str = "dataset.id") -> Path:
    """A local dataset must be a supported file or a folder, under an allowed root."""
    path = resolve_under_roots(ref, roots, param=param)
    if path.is_dir():
        return path
    if not path.is_file():
        raise InvalidInput(f"dataset {ref!r} does not exist", code="dataset_not_found", param=param)
    if path.suffix not in DATASET_SUFFIXES:
        raise InvalidInput(
            f"dataset file must end in one of {', '.join(DATASET_SUFFIXES)}",
            code="unsupported_format",
            param=param,
        )
    return path


def refuse_hub_id_shadowed_by_path(ref: str, param: str) -> None:
    """A Hub id that also names a path relative to the process's directory would be read from disk by
    `from_pretrained`/`load_dataset`, outside the allowed roots: refuse it."""
    if os.path.exists(ref):
        raise InvalidInput(
            f"{ref!r} names a local path; write it as an absolute path under an allowed root",
            code="path_not_allowed",
            param=param,
        )


def check_local_refs(spec: JobSpec, roots: list[Path]) -> None:
    """Check every local path of a spec without reading the files."""
    if is_local_path(spec.base_model):
        check_local_model(spec.base_model, roots)
    else:
        refuse_hub_id_shadowed_by_path(spec.base_model, "base_model")
    if spec.adapter is not None and is_local_path(spec.adapter):
        check_local_model(spec.adapter, roots, param="adapter")
    elif spec.adapter is not None and not is_job_id(spec.adapter):
        refuse_hub_id_shadowed_by_path(spec.adapter, "adapter")
    for param, ref in ((f"{field}.id", dataset.id) for field, dataset in spec.datasets()):
        if is_local_path(ref):
            check_local_dataset(ref, roots, param=param)
        elif not is_file_id(ref):
            refuse_hub_id_shadowed_by_path(ref, param)
