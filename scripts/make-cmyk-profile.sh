#!/usr/bin/env bash
# Regenerates services/darkroom/worker/profiles/fogra39-low.icc, the CMYK profile the worker
# assumes for a CMYK or YCCK JPEG that embeds none (see that directory's README.md).
#
# It is built from the FOGRA39 characterization data (offset on coated paper, ISO 12647-2) as
# Debian's icc-profiles-free ships it (FOGRA39L.ti3, Zlib licence) by ArgyllCMS's colprof, a
# build tool only: nothing of Argyll is shipped, only the profile it computes from the data.
#
#   apt-get install argyll icc-profiles-free
#   scripts/make-cmyk-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${FOGRA39_TI3:-/usr/share/color/icc/FOGRA39L.ti3}
OUT=services/darkroom/worker/profiles/fogra39-low.icc
command -v colprof >/dev/null || { echo "colprof missing: apt-get install argyll" >&2; exit 1; }
[ -r "$DATA" ] || { echo "$DATA missing: apt-get install icc-profiles-free" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cp "$DATA" "$WORK/fogra39.ti3"
# -ql: a 5-point CMYK grid with input curves (about 28 KB, mean dE76 0.6 from the data);
# -bl: a low-resolution Lab to CMYK table, which the worker never uses; -nc: no copy of the data.
colprof -ql -bl -nc \
  -D "FOGRA39 (ISO 12647-2 coated offset), low resolution, by ArgyllCMS colprof" \
  -C "From FOGRA39L.ti3 (Fogra data as packaged by Kai-Uwe Behrmann, Zlib licence)" \
  -O "$WORK/fogra39.icc" "$WORK/fogra39" >/dev/null
cp "$WORK/fogra39.icc" "$OUT"
echo "$OUT: $(wc -c <"$OUT") bytes"
