#!/usr/bin/env bash
# Regenerates tests/golden/quantities.tsv: a fixed sample of quantity strings (well formed ones of every suffix,
# sign and exponent, and malformed ones) with apimachinery v0.34.4's answers for each (main.go). Needs Go and the module
# (k8s.io/apimachinery v0.34.4, in the module cache after `make cluster-binaries`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../tests/golden/quantities.tsv"
trap 'rm -f "$here/go.sum"' EXIT
python3 - <<'PY' |
import random

random.seed(19)
suffixes = ["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
digits = "0123456789"


def number() -> str:
    whole = "".join(random.choice(digits) for _ in range(random.randint(0, 10)))
    fraction = "".join(random.choice(digits) for _ in range(random.randint(0, 10)))
    return random.choice([whole or "0", f"{whole or '0'}.{fraction}", f"{whole or '0'}.", f".{fraction or '5'}"])


seen = set()
while len(seen) < 1500:
    text = random.choice(["", "", "+", "-"]) + number()
    pick = random.random()
    if pick < 0.6:
        text += random.choice(suffixes)
    elif pick < 0.9:
        text += random.choice("eE") + random.choice(["", "+", "-"]) + str(random.randint(0, 40))
    seen.add(text)
while len(seen) < 2000:
    seen.add("".join(random.choice(digits + ".+-eEinumkKMGTPi") for _ in range(random.randint(1, 6))))
print("\n".join(sorted(seen)))
PY
(cd "$here" && GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local go run .) > "$out"
echo "wrote $(wc -l < "$out") lines to $out"
