#!/usr/bin/env bash
# Checks a container image built from the Dockerfile against this checkout's own build, on the
# demo's data: the image must find its libraries, reach a database through DATABASE_URL, train
# to the same checkpoint bytes as the host's binary did, run encode -> train -> sample ->
# evaluate into the leaderboard, and serve the dashboard that shows it.
#
# Usage: scripts/check_image.sh IMAGE [DATA_DIR]
#   IMAGE     e.g. llamagen-rs:cpu (docker build -t llamagen-rs:cpu .)
#   DATA_DIR  a data folder where `llamagen demo` has run (default: a new temporary folder, in
#             which the host's target/release or target/debug llamagen runs the demo first)
#
# The database is DATA_DIR's private cluster, held up by the host's `llamagen db url --hold`
# and reached from the container through its unix socket (the folder is mounted at the same
# path). The private cluster admits only the user who runs llamagen, so the container runs
# as the caller's uid here; against a shared server the image runs as its own user.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${1:?usage: scripts/check_image.sh IMAGE [DATA_DIR]}"
data="${2:-}"
docker="${DOCKER:-docker}"
log() { printf '\033[1mcheck_image:\033[0m %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

host_bin=""
for b in "$root/target/release/llamagen" "$root/target/debug/llamagen"; do
    [ -x "$b" ] && { host_bin="$b"; break; }
done
[ -n "$host_bin" ] || fail "no host llamagen; build it first (cargo build -p llamagen-cli)"
"$docker" image inspect "$image" >/dev/null || fail "no image $image; build it first (docs/deploy.md)"

if [ -z "$data" ]; then
    data="$(mktemp -d /tmp/llamagen-image-check.XXXXXX)"
    chmod 755 "$data" # run as root, the private cluster runs as postgres, who must enter it
    log "running the demo on the host into $data"
    "$host_bin" --data-dir "$data" demo --no-serve >"$data/demo.log" 2>&1 || fail "the host's demo failed: $data/demo.log"
fi
data="$(cd "$data" && pwd)"
ls "$data"/demo/train/*.safetensors >/dev/null 2>&1 || fail "$data holds no demo run (demo/train/*.safetensors)"

url_file="$data/.check-image-url"
"$host_bin" --data-dir "$data" db url --hold >"$url_file" 2>"$data/.check-image-hold.log" &
holder=$!
dashboard=""
cleanup() {
    [ -z "$dashboard" ] || "$docker" rm -f "$dashboard" >/dev/null 2>&1 || true
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$url_file" ] && break; sleep 0.1; done
url="$(head -n1 "$url_file")"
[ -n "$url" ] || fail "db url --hold printed no URL: $(cat "$data/.check-image-hold.log")"

in_image() {
    "$docker" run --rm --network none --user "$(id -u):$(id -g)" \
        -v "$data:$data" -v "$root/configs:/configs:ro" -e DATABASE_URL="$url" \
        "$image" --data-dir "$data" "$@"
}

log "doctor in $image"
doctor="$(in_image doctor 2>/dev/null)" || { echo "$doctor"; fail "doctor found problems"; }
echo "$doctor"

# The demo's training again, into a new folder: the same data and seed must give the same bytes.
log "the demo's training in $image"
in_image run /configs/demo.toml --stage train --set pipeline.name=image-check-same \
    --set train.output=demo/train-image-check >"$data/.check-image-train.log" 2>&1 ||
    fail "training in the image failed: $data/.check-image-train.log"
for host_ckpt in "$data"/demo/train/*.safetensors; do
    name="$(basename "$host_ckpt")"
    image_ckpt="$data/demo/train-image-check/$name"
    [ -f "$image_ckpt" ] || fail "the image wrote no $name"
    cmp -s "$host_ckpt" "$image_ckpt" || fail "$name differs between the host's build and the image"
done
log "checkpoints equal to the host's, byte for byte: $(cd "$data/demo/train" && echo *.safetensors)"

# A seed of its own, so that no checkpoint is already evaluated (finished work is not redone,
# and a reused DATA_DIR may hold earlier checks): the whole chain in the image.
seed="$(( $(date +%s) % 1000000 + 1 ))"
model="image-check-seed$seed"
log "encode -> train -> sample -> evaluate in $image (seed $seed)"
in_image run /configs/demo.toml --stage encode --stage train --stage sample --stage evaluate \
    --set pipeline.name="$model" --set train.seed="$seed" \
    --set encode.codes_output=demo/codes-image-check --set train.output="demo/train-$model" \
    --set evaluate.samples_output=demo/evaluations-image-check >"$data/.check-image-run.log" 2>&1 ||
    fail "the pipeline in the image failed: $data/.check-image-run.log"
grep -E '^(== |[0-9]+ shard|trained|[0-9]+ checkpoint|evaluator|run #)' "$data/.check-image-run.log" >&2 || true
rows="$(PGCONNECT_TIMEOUT=5 "$host_bin" --data-dir "$data" db shell -- -tA \
    -c "SELECT count(*) FROM leaderboard WHERE model = '$model-GPT' AND fid IS NOT NULL")"
[ "${rows//[[:space:]]/}" -gt 0 ] 2>/dev/null || fail "no leaderboard rows for $model-GPT"

# The dashboard from the image, over the same database.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log "the dashboard in $image on 127.0.0.1:$port"
dashboard="$("$docker" run -d --network host --user "$(id -u):$(id -g)" -v "$data:$data" \
    -e DATABASE_URL="$url" "$image" --data-dir "$data" serve --listen "127.0.0.1:$port")"
page=""
for _ in $(seq 100); do
    page="$(curl -fsS "http://127.0.0.1:$port/?benchmark=demo-shards-c2i" 2>/dev/null)" && break
    sleep 0.2
done
[[ "$page" == *"$model-GPT"* ]] || fail "the image's dashboard does not list $model-GPT: $("$docker" logs "$dashboard" 2>&1 | tail -n 5)"
log "ok: $image runs the pipeline ($rows leaderboard row(s) for $model-GPT) and serves the dashboard"
