#!/bin/bash
# Wheels for running bench/train_throughput.py on the GPU machine, in .whl/ at the repo root (git-ignored; name it in
# the device tool's `carry`). See bench/README.md for the command that installs them there.
#
# ../shared/tools/gpu-wheels.sh fetches the pinned training stack. ftq's worker path also imports what the GPU image
# lacks: pydantic (shared/spec.py) and, depending on how far worker/ defers its database imports, pydantic-settings
# and python-dotenv (shared/settings.py), SQLAlchemy (shared/db.py, shared/models.py) and cryptography
# (shared/vault.py), with their own needs; they are all carried so either state of the code runs. All of it comes
# to about 70 MB against the 64 MiB the tool carries, so the bitsandbytes wheel (43 MB, one library per CUDA and
# ROCm version) is cut down to its CPU and CUDA 13 libraries (the image's torch is cu130): about 35 MB in all.
# Liger stays: ftq's worker turns its kernels on by itself on CUDA when the package is there.
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
"${GPU_WHEELS:-$root/../shared/tools/gpu-wheels.sh}" \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0 SQLAlchemy==2.1.9 cryptography==50.0.2 cffi==2.1.1 \
  pycparser==3.12 "$@"
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
