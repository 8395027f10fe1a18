#!/bin/sh
# make demo: the embedded demo on a fresh SQLite file in a temporary directory.
set -e
host=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$host" -l warn scripts/examples/demo.lua "$dir/demo.db"
