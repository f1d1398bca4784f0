#!/usr/bin/env bash
# The Docker build's dependency recipe (cargo-chef's technique, without the tool): copies the
# workspace's manifests, lockfile and clippy.toml from SRC to DEST and writes a stub for every
# target root (lib.rs, main.rs, bins, examples, tests, benches, build.rs). Compiling DEST builds
# exactly the dependencies of SRC; its bytes change only when a manifest or the lockfile does.
# Nothing here names a crate or a source folder, so a new crate needs no change.
#   scripts/docker-recipe.sh SRC DEST
set -eu
src=$1 dest=$2
cd "$src"
mkdir -p "$dest"
find . -name target -prune -o \( -name Cargo.toml -o -name Cargo.lock -o -name clippy.toml \) -print |
    while read -r manifest; do
        mkdir -p "$dest/$(dirname "$manifest")"
        cp "$manifest" "$dest/$manifest"
    done
find . -name target -prune -o -type f \( -path '*/src/lib.rs' -o -path '*/src/main.rs' \
    -o -path '*/src/bin/*.rs' -o -path '*/examples/*.rs' -o -path '*/tests/*.rs' \
    -o -path '*/benches/*.rs' -o -name build.rs \) -print |
    while read -r root; do
        # Only target roots: a test's or example's helper module is not one.
        case "$root" in
        */tests/*/* | */examples/*/* | */benches/*/*) [ "${root##*/}" = main.rs ] || continue ;;
        esac
        mkdir -p "$dest/$(dirname "$root")"
        echo '//! Dependency-layer stub.' >"$dest/$root"
        case "$root" in */lib.rs) ;; *) echo 'fn main() {}' >>"$dest/$root" ;; esac
    done
