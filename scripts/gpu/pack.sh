#!/usr/bin/env bash
# Packs what a lent GPU machine (the device tool: no Rust, no network) needs to measure this
# checkout into the git-ignored .gpu/: a stripped release build (xz), optionally an older
# revision's build to compare against in the same run, ../shared/gpu's scripts, a
# tokenizer.json and the Vulkan loader's .deb. Then run the device tool with
# carry [".gpu"] and `bash scripts/gpu/measure.sh $OUT ...` (see that script).
#
# Usage: scripts/gpu/pack.sh [OLD_REV]   (OLD_REV: a commit to build as .gpu/steerlm-old.xz)
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=../shared/gpu
target="$PWD/target"
mkdir -p .gpu
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo /.gpu/ >> "$exclude"

build() { # build DIR OUT.xz: a stripped, xz-compressed release binary of the checkout in DIR
    # One target folder for both builds: an older revision rebuilds only what changed.
    (cd "$1" && cargo build --release --locked -p steerlm --target-dir "$target")
    strip -o /tmp/steerlm-pack "$target/release/steerlm"
    xz -T2 -6 -c /tmp/steerlm-pack > "$2"
    rm -f /tmp/steerlm-pack
    echo "packed $2 ($(du -h "$2" | cut -f1)) from $(git -C "$1" rev-parse --short HEAD)"
}
build . .gpu/steerlm.xz
if [ -n "${1:-}" ]; then
    old=/tmp/steerlm-old-worktree
    git worktree remove --force "$old" 2>/dev/null || true
    git worktree add --detach "$old" "$1"
    build "$old" .gpu/steerlm-old.xz
    git worktree remove --force "$old"
fi
cp -f "$shared"/*.py "$shared"/*.sh .gpu/
cp -f tests/fixtures/models/qwen9/tokenizer.json .gpu/
if ! ls .gpu/libvulkan1_*.deb >/dev/null 2>&1; then
    lists=/tmp/apt-amd64
    mkdir -p "$lists/partial"
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
    apt-get "${o[@]}" update -qq && (cd .gpu && apt-get "${o[@]}" download libvulkan1)
fi
du -sh .gpu
