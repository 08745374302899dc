#!/bin/bash
# Download the wheels an offline GPU machine lacks into .whl/ (run from the project root, with network).
# That machine is expected to have Python (3.12 by default: PYVER=3.11 for 3.11), JAX with CUDA, NumPy,
# pandas, matplotlib and OpenCV; this brings Keras, keras-tuner and a Ray repacked for Tune only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pyver=${PYVER:-3.12}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl /tmp/whl-raw && mkdir -p .whl /tmp/whl-raw
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d /tmp/whl-raw \
  keras==3.15.1 keras-tuner==1.4.8 kt-legacy namex optree ray==2.60.0 \
  jsonschema jsonschema-specifications referencing rpds-py tensorboardX absl-py grpcio six \
  pydantic pydantic-core annotated-types typing-inspection
for w in /tmp/whl-raw/*.whl; do
  case "$(basename "$w")" in
    ray-*) python3 "$here/strip_ray.py" "$w" ".whl/$(basename "$w")" ;;
    *) cp "$w" .whl/ ;;
  esac
done
du -sh .whl
