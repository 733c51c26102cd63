#!/bin/bash
# Wheels for running bench/train_throughput.py on the GPU machine, in .whl/ at the repo root (git-ignored; name it in
# the device tool's `carry`). See bench/README.md for the command that installs them there.
#
# ../shared/tools/gpu-wheels.sh fetches the pinned training stack. ftq's worker path also imports what the GPU image
# lacks: pydantic (shared/spec.py) and, depending on how far worker/ defers its database imports, pydantic-settings
# and python-dotenv (shared/settings.py), SQLAlchemy (shared/db.py, shared/models.py) and cryptography
# (shared/vault.py), with their own needs; they are all carried so either state of the code runs. bench/gpu_box.py
# runs the whole service (`ftq up`: FastAPI with aiosqlite, Celery on its embedded broker, alembic), so those come too
# (about 8 MB).
# The training stack comes to about 70 MB against the 64 MiB the tool carries, so the bitsandbytes wheel (43 MB, one
# library per CUDA and ROCm version) is cut down to its CPU and CUDA 13 libraries (the image's torch is cu130): about
# 43 MB in all. Liger stays: ftq's worker turns its kernels on by itself on CUDA when the package is there.
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
"${GPU_WHEELS:-$root/../shared/tools/gpu-wheels.sh}" \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0 SQLAlchemy==2.1.9 cryptography==50.0.2 cffi==2.1.1 \
  pycparser==3.12 \
  fastapi==0.163.2 starlette==1.10.0 annotated-doc==0.0.7 uvicorn==0.54.0 h11==0.16.0 click==8.5.1 anyio==4.16.0 \
  idna==3.20 alembic==1.20.1 Mako==1.4.3 MarkupSafe==3.0.4 celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 \
  amqp==5.4.2 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 prompt_toolkit==3.0.53 \
  wcwidth==0.9.4 python-dateutil==2.9.0.post0 six==1.17.0 tzdata==2026.6 tzlocal==5.4.5 redis==8.1.0 httpx==0.28.1 \
  httpcore==1.0.9 certifi==2026.10.19.post1 python-multipart==0.0.34 PyYAML==6.0.4 rich==15.0.0 \
  markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0 setproctitle==1.3.8 greenlet==3.5.6 opentelemetry-api==1.45.2 \
  importlib-metadata==10.2.0 zipp==4.1.2 aiosqlite==0.22.1 "$@"
python3 - <<'EOF'
import pathlib
import re
import zipfile

keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d+)\.so$")


def dropped(name: str) -> bool:
    return "libbitsandbytes_" in name and not keep.search(name)


for wheel in pathlib.Path(".whl").glob("bitsandbytes-*.whl"):
    slim = wheel.with_name(wheel.name + ".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if dropped(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(line for line in lines if not dropped(line.split(",")[0])).encode() + b"\n"
            dst.writestr(item, data)
    slim.replace(wheel)
    print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB after keeping only the CPU and CUDA 13 libraries")
EOF
du -sh .whl
