#!/usr/bin/env bash
# Builds the Flink and Kafka Streams drivers of bench/compare.sh (Maven Central artifacts, the
# Maven cache in ~/.m2) into $WEIR_CACHE/compare-<hash of the sources>, once; prints that folder:
# <module>.jar and <module>.classpath for flink and kstreams; and matplotlib into
# $WEIR_CACHE/venv-bench for the report's chart.
set -euo pipefail
source "$(dirname "$0")/../../e2e/stack/lib.sh"
SRC=$(cd "$(dirname "$0")" && pwd)
hash=$(cd "$SRC" && find . -path '*/target' -prune -o -type f \( -name '*.java' -o -name 'pom.xml' -o -path '*/resources/*' \) -print |
  sort | xargs sha256sum | sha256sum | cut -c1-12)
OUT=$WEIR_CACHE/compare-$hash
if [[ ! -f $OUT/.installed ]]; then
  log "building the Flink and Kafka Streams benchmark drivers into $OUT"
  mkdir -p "$OUT"
  build=$(mktemp -d)
  cp -r "$SRC"/. "$build"
  (cd "$build" && mvn -q -B package dependency:build-classpath -DskipTests -DexcludeGroupIds=dev.weir.bench \
    -Dmdep.outputFile=classpath.txt) >&2 || { rm -rf "$build"; die "Maven could not build bench/compare"; }
  cp "$build/common/target/common-1.jar" "$OUT/common.jar"
  for m in flink kstreams; do
    cp "$build/$m/target/$m-1.jar" "$OUT/$m.jar"
    printf '%s:%s' "$OUT/common.jar" "$(cat "$build/$m/classpath.txt")" >"$OUT/$m.classpath"
  done
  rm -rf "$build"
  touch "$OUT/.installed"
fi
# matplotlib for the chart, in a virtualenv of its own (from PyPI, once).
VENV=$WEIR_CACHE/venv-bench
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into $VENV"
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q matplotlib >&2 || log "no matplotlib: the report will have no chart"
fi
echo "$OUT"
