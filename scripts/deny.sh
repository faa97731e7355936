#!/usr/bin/env bash
# `make lint`'s dependency check: cargo-deny (installed once into the cache) on security
# advisories, licenses (only those deny.toml allows), banned sources (crates.io only) and wildcard
# versions.
#
# Advisories come from the RustSec database, a git repository kept in the cache and brought up to
# date from the first source that answers: $WEIR_ADVISORY_DB (a URL or a local clone or mirror),
# GitHub, or a local mirror of it where this build machine keeps one. When none answers, the copy
# already in the cache is used and its date said; with no copy at all the advisories check is
# skipped with a warning (the other checks still run).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
VERSION=0.20.2
DENY=$CACHE/cargo-deny-$VERSION/bin/cargo-deny
[[ -x $DENY ]] || cargo install --locked --quiet --root "$CACHE/cargo-deny-$VERSION" "cargo-deny@$VERSION"

# cargo-deny keeps a database cloned from its default URL under this name in `db-path`.
export WEIR_ADVISORY_DBS=$CACHE/advisory-dbs
DB=$WEIR_ADVISORY_DBS/advisory-db-3157b0e258782691
sources=("${WEIR_ADVISORY_DB:-}" https://github.com/RustSec/advisory-db /work/.mirror/rustsec+advisory-db/repo)

update_db() {
  local source tmp
  for source in "${sources[@]}"; do
    [[ -n $source ]] || continue
    [[ $source == /* && ! -e $source ]] && continue
    if [[ -d $DB/.git ]]; then
      if GIT_TERMINAL_PROMPT=0 timeout 120 git -C "$DB" fetch -q --depth 1 "$source" HEAD 2>/dev/null; then
        git -C "$DB" reset -q --hard FETCH_HEAD && return 0
      fi
    else
      tmp=$DB.partial
      rm -rf "$tmp"
      mkdir -p "$WEIR_ADVISORY_DBS"
      # a local path as a file:// URL, so that --depth applies to it too
      [[ $source == /* ]] && source=file://$source
      if GIT_TERMINAL_PROMPT=0 timeout 300 git clone -q --depth 1 "$source" "$tmp" 2>/dev/null; then
        mv "$tmp" "$DB" && return 0
      fi
      rm -rf "$tmp"
    fi
  done
  return 1
}

checks=(licenses bans sources)
if update_db; then
  checks+=(advisories)
  echo "advisory database: $(git -C "$DB" log -1 --format='%h of %cs')"
elif [[ -d $DB/.git ]]; then
  checks+=(advisories)
  echo "advisory database: no source answered; using the cached copy of $(git -C "$DB" log -1 --format=%cs)" >&2
else
  echo "warning: advisories NOT checked: no source of the RustSec database answered (${sources[*]})" >&2
fi
"$DENY" --offline check "${checks[@]}"
