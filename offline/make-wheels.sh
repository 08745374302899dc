#!/bin/bash
# Build kit/site.tar.xz: the packages an offline GPU machine lacks, installed for CPython 3.12 x86-64 and
# packed with xz (run from the project root, on a machine with network; the Python here may be any 3.x).
# That machine is expected to have Python 3.12 (PYVER=3.11 for 3.11), JAX with CUDA, NumPy, pandas,
# pyarrow (ray.tune needs it; its 55 MB wheel leaves no room in a 64 MiB transfer), matplotlib and OpenCV;
# the kit brings Keras, keras-tuner, a Ray repacked for Tune only and what they need besides.
# The downloaded wheels stay in .whl/ (Ray already repacked). On the GPU machine, without pip:
#   mkdir -p .site && tar -xJf kit/site.tar.xz -C .site && export PYTHONPATH=$PWD/.site:$PWD KERAS_BACKEND=jax
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pyver=${PYVER:-3.12}
exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /kit/; do grep -qx "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf .whl kit && mkdir -p .whl kit "$tmp/raw" "$tmp/site"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pyargs=(--only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}")
python3 -m pip download -q --no-deps "${pyargs[@]}" -d "$tmp/raw" \
  keras==3.15.1 absl-py namex optree h5py rich markdown-it-py mdurl pygments packaging \
  keras-tuner==1.4.8 kt-legacy requests charset-normalizer idna urllib3 certifi grpcio protobuf \
  ray==2.60.0 click filelock jsonschema jsonschema-specifications referencing rpds-py attrs msgpack \
  pyyaml fsspec tensorboardX pydantic pydantic-core annotated-types typing-inspection typing-extensions six
for w in "$tmp"/raw/*.whl; do
  case "$(basename "$w")" in
    ray-*) python3 "$here/strip_ray.py" "$w" ".whl/$(basename "$w")" ;;
    *) cp "$w" .whl/ ;;
  esac
done
python3 -m pip install -q --no-deps --no-compile "${pyargs[@]}" --target "$tmp/site" .whl/*.whl
# Not needed at run time: tests, caches, type stubs, console scripts, the rest of Ray's web client, and
# the symbol tables of Ray's own binaries (they only make crash traces readable; skipped where binutils'
# strip is missing, the archive is then a few MB larger).
cd "$tmp/site"
find . -depth -type d \( -name __pycache__ -o -name tests -o -name test \) -prune -exec rm -rf {} +
find . -name '*.pyi' -delete
find keras -name '*_test.py' -delete
rm -rf bin ray/dashboard/client
if command -v strip > /dev/null; then
  strip --strip-unneeded ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet
fi
cd - > /dev/null
XZ_OPT=${XZ_OPT:--9 -T1} tar -C "$tmp/site" -cJf kit/site.tar.xz .
echo "kit/site.tar.xz: $(stat -c %s kit/site.tar.xz) bytes ($(du -sh "$tmp/site" | cut -f1) unpacked); .whl/: $(du -sh .whl | cut -f1)"
