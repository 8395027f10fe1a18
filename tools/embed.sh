#!/bin/sh
# tools/embed.sh NAME FILE: a C file defining `const char NAME[]`, the text of FILE, so that SQL
# is kept as .sql data and compiled in (the build's only generator; make runs it).
set -eu
[ $# -eq 2 ] || { echo "usage: tools/embed.sh NAME FILE" >&2; exit 2; }
printf '/* Made by tools/embed.sh from %s: edit that file, not this one. */\n' "$2"
printf 'const char %s[] =\n' "$1"
# each line as a literal: backslash, double quote and question mark escaped (-std=c11 reads
# trigraphs: "??=" would be "#"), the newline kept
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/^/    "/' -e 's/$/\\n"/' "$2"
printf '    ;\n'
