#!/usr/bin/env bash
# Benchmarks `modelguard seal` and `modelguard unseal` on a generated model
# (2 GiB in a few files by default) against baselines measured in the same
# run on the same bytes:
#
#   unseal (bundle on disk -> tmpfs)   vs  cp of the plaintext into /dev/shm
#   unseal                             vs  age -d of the same files into /dev/shm
#   unseal                             vs  unseal of format v1 (built from V1_REF)
#   seal   (plaintext -> disk)         vs  sha256sum of the plaintext
#
# Format v2's unseal hashes the plaintext as it decrypts (so that the pinned
# digest covers the bytes served) and copies ciphertext out of the page cache
# instead of decrypting from a shared mapping; the v1 contender, the last
# format v1 code built from git, shows what that costs, on a v1 bundle of the
# same model.
#
# Each figure is the best of RUNS interleaved rounds with warm page caches
# (every input is read once before timing), so the comparison is of CPU and
# memory work, not of the disk. Run it on an otherwise idle machine; it
# prints the load.
#
# Usage: hack/bench-seal.sh            (or: make bench-seal)
#   SIZE_MIB=2048  model size        RUNS=5  rounds (each figure is the best)
#   BENCH_DIR=dir  where the plaintext and bundle go (default: a temp dir on disk)
#   V1_REF=commit  the format v1 code to compare with (default: the last v1 commit;
#                  V1_REF= leaves the v1 contender out)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${SIZE_MIB:-2048}
runs=${RUNS:-5}
# The last commit whose sealed format is version 1.
v1_ref=${V1_REF-3249d8ed65254fb4ea9416ea02f4c7e080ac1a18}

if ! command -v age >/dev/null || ! command -v age-keygen >/dev/null; then
  echo "bench-seal: installing the Debian package age for the baseline..." >&2
  if ! apt-get install -y age >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y age >/dev/null
  fi
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
work=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/var/tmp}/modelguard-bench.XXXXXX")}
shm=$(mktemp -d /dev/shm/modelguard-bench.XXXXXX)
cleanup() { rm -rf "$shm"; [ -n "${BENCH_DIR:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

bin=$work/modelguard
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$bin" ./cmd/modelguard)
v1bin=
if [ -n "$v1_ref" ]; then
  echo "bench-seal: building the format v1 modelguard from $v1_ref ..." >&2
  mkdir -p "$work/v1src"
  git -C "$repo" archive "$v1_ref" | tar -x -C "$work/v1src"
  (cd "$work/v1src" && CGO_ENABLED=0 go build -trimpath -o "$work/modelguard-v1" ./cmd/modelguard)
  v1bin=$work/modelguard-v1
fi

# A model of a few files: three shards and small JSON files.
src=$work/model
mkdir -p "$src"
shard=$((size_mib * 3 / 8))
last=$((size_mib - 2 * shard))
echo "bench-seal: generating a ${size_mib} MiB model in $src ..." >&2
for spec in "model-00001-of-00003.safetensors:$shard" "model-00002-of-00003.safetensors:$shard" \
            "model-00003-of-00003.safetensors:$last"; do
  head -c "$((${spec#*:} << 20))" /dev/urandom >"$src/${spec%%:*}"
done
head -c 2000 /dev/urandom | base64 >"$src/tokenizer.json"
echo '{"architectures":["LlamaForCausalLM"],"torch_dtype":"bfloat16"}' >"$src/config.json"
files=("$src"/*)
bytes=$(cat "${files[@]}" | wc -c)

head -c 32 /dev/urandom >"$work/kek"
age-keygen -o "$work/age.key" 2>/dev/null
recipient=$(age-keygen -y "$work/age.key")
mkdir -p "$work/age"
for f in "${files[@]}"; do age -r "$recipient" -o "$work/age/$(basename "$f").age" "$f"; done
"$bin" seal "$src" "$work/bundle" --kek-file "$work/kek" --progress none >/dev/null
[ -z "$v1bin" ] || "$v1bin" seal "$src" "$work/bundle-v1" --kek-file "$work/kek" --progress none >/dev/null
# Warm the page cache with every input, and flush dirty pages, so that no
# run pays for the disk or for another run's writeback.
cat "${files[@]}" "$work"/age/* "$work"/bundle/* >/dev/null
[ -z "$v1bin" ] || cat "$work"/bundle-v1/* >/dev/null
sync

now() { date +%s%N; }

# timed NAME CMD...: runs CMD and keeps its fastest time in best_NAME (ns).
timed() {
  local name=$1; shift
  local t0 t1 var
  var=best_$name
  t0=$(now)
  "$@"
  t1=$(now)
  if [ -z "${!var:-}" ] || [ $((t1 - t0)) -lt "${!var}" ]; then printf -v "$var" '%s' $((t1 - t0)); fi
}

run_unseal() { "$bin" unseal "$work/bundle" "$shm/unseal" --kek-file "$work/kek" --progress none 2>/dev/null; }
run_unseal_v1() { "$v1bin" unseal "$work/bundle-v1" "$shm/unseal-v1" --kek-file "$work/kek" --progress none 2>/dev/null; }
run_cp() { cp -r "$src" "$shm/cp"; }
run_age() {
  mkdir -p "$shm/age"
  for f in "$work"/age/*.age; do age -d -i "$work/age.key" -o "$shm/age/$(basename "${f%.age}")" "$f"; done
}
run_seal() { "$bin" seal "$src" "$work/sealed" --kek-file "$work/kek" --progress none >/dev/null 2>&1; }
run_sha256sum() { sha256sum "${files[@]}" >/dev/null; }

# check_output DIR LABEL: fails unless DIR holds exactly the model's files.
check_output() {
  for f in "${files[@]}"; do
    cmp -s "$f" "$1/$(basename "$f")" || { echo "bench-seal: $2 output differs for $f" >&2; exit 1; }
  done
}

# Rounds interleave the contenders, so that drift in the machine's speed
# (other load, the cost of fresh memory pages in a VM) hits them alike; each
# figure is the best of its runs. Outputs are removed between runs, untimed.
echo "bench-seal: measuring ($runs rounds) ..." >&2
for ((round = 1; round <= runs; round++)); do
  timed unseal run_unseal
  # The benchmark is only honest if unseal really produced the model.
  [ "$round" != 1 ] || check_output "$shm/unseal" unseal
  rm -rf "$shm/unseal"
  if [ -n "$v1bin" ]; then
    timed unseal_v1 run_unseal_v1
    [ "$round" != 1 ] || check_output "$shm/unseal-v1" "v1 unseal"
    rm -rf "$shm/unseal-v1"
  fi
  timed cp run_cp; rm -rf "$shm/cp"
  timed age run_age; rm -rf "$shm/age"
  timed seal run_seal; rm -rf "$work/sealed"; sync
  timed sha256sum run_sha256sum
done
unseal_ns=$best_unseal cp_ns=$best_cp age_ns=$best_age seal_ns=$best_seal sha_ns=$best_sha256sum
unseal_v1_ns=${best_unseal_v1:-}
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mbps() { awk -v b="$bytes" -v ns="$1" 'BEGIN { printf "%8.0f", b / (ns / 1e9) / 1e6 }'; }
secs() { awk -v ns="$1" 'BEGIN { printf "%7.3f s", ns / 1e9 }'; }
# ratio A_NS B_NS TARGET: the throughput ratio A/B (time B / time A) and
# whether it meets TARGET.
ratio() {
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN {
    r = b / a; printf "%5.2fx   (target >= %.1fx)  %s", r, t, (r >= t ? "met" : "NOT met") }'
}

cat <<EOF

ModelGuard sealing benchmark: $(awk -v b="$bytes" 'BEGIN { printf "%.2f GiB", b / 2^30 }') in ${#files[@]} files, best of $runs rounds
CPUs: $(nproc), load average at start: $load_before, at the end: $load_after, age $(age --version)

  measurement                                   time       MB/s
  modelguard unseal  (bundle -> tmpfs)     $(secs "$unseal_ns")   $(mbps "$unseal_ns")
  cp                 (plaintext -> tmpfs)  $(secs "$cp_ns")   $(mbps "$cp_ns")
  age -d             (age files -> tmpfs)  $(secs "$age_ns")   $(mbps "$age_ns")
  modelguard seal    (plaintext -> disk)   $(secs "$seal_ns")   $(mbps "$seal_ns")
  sha256sum          (plaintext)           $(secs "$sha_ns")   $(mbps "$sha_ns")

  unseal / cp          $(ratio "$unseal_ns" "$cp_ns" 0.9)
  unseal / age -d      $(ratio "$unseal_ns" "$age_ns" 2.0)
  seal / sha256sum     $(ratio "$seal_ns" "$sha_ns" 1.8)
EOF
if [ -n "$unseal_v1_ns" ]; then
  cat <<EOF

  format v1 unseal   (v1 bundle -> tmpfs)  $(secs "$unseal_v1_ns")   $(mbps "$unseal_v1_ns")   (modelguard at ${v1_ref:0:12})
  unseal v2 / unseal v1  $(awk -v a="$unseal_ns" -v b="$unseal_v1_ns" 'BEGIN { printf "%5.2fx   (v2 takes %+.0f%% time: it hashes the plaintext and copies the ciphertext)", b / a, (a / b - 1) * 100 }')
EOF
fi
