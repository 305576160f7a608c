#!/usr/bin/env bash
# Guards DESIGN.md's layering: the pure crates must not depend on an async
# runtime, a network or storage library, nor reach for IO or the wall clock
# in their own sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PURE_CRATES=(converge-crdt converge-doc converge-sync)
FORBIDDEN_DEPS='^(tokio|tokio-[a-z-]+|mio|async-std|smol|socket2|hyper|axum|tungstenite|tokio-tungstenite|reqwest|redb|rusqlite|fjall|postgres|tokio-postgres|sqlx|nix) '
FORBIDDEN_CALLS='std::fs|std::net|std::thread|std::process|SystemTime|Instant::now|tokio::'

status=0
for crate in "${PURE_CRATES[@]}"; do
    deps=$(cargo tree --locked -e normal -p "$crate" --prefix none --format '{p}' | sort -u)
    if bad=$(grep -E "$FORBIDDEN_DEPS" <<<"$deps"); then
        echo "layering: $crate must stay pure but depends on:"
        echo "$bad" | sed 's/^/  /'
        status=1
    fi
    dir=$(cargo metadata --locked --no-deps --format-version 1 |
        python3 -c "import json,sys; m=json.load(sys.stdin); print([p['manifest_path'] for p in m['packages'] if p['name']=='$crate'][0].rsplit('/',1)[0])")
    if grep -rnE "$FORBIDDEN_CALLS" "$dir/src"; then
        echo "layering: $crate sources above reach for IO or the wall clock; pass values in instead"
        status=1
    fi
done
[ $status -eq 0 ] && echo "layering: ok (${PURE_CRATES[*]} are pure)"
exit $status
