#!/usr/bin/env bash
# The pull-request data review, runnable anywhere: scripts/data_review.sh BASE HEAD OUT
#
# Materialises both revisions' data into this repo's one DVC cache (pulled from the DVC remote
# when there is one, checked out of the cache where an earlier run left it, and reproduced where
# neither has it), then writes to OUT:
#   comment.md    the pull-request comment: what to look at first (`curate compare`'s lead:
#                 gates whose verdict changed, samples added / removed / relabelled, headline
#                 metrics that moved), the full comparison, and both revisions side by side
#                 (`curate exps --md`)
#   compare.html  the comparison with thumbnails of the samples that changed
#   exps.html     the two revisions' table and plots
# Each revision is checked out in a temporary git worktree, so the workspace is left as it was.
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: scripts/data_review.sh BASE HEAD OUT" >&2
  exit 2
fi
base_rev="$1" head_rev="$2" out="$3"
export DVC_NO_ANALYTICS=1
cd "$(git rev-parse --show-toplevel)"
for rev in "$base_rev" "$head_rev"; do
  git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "data_review: $rev: not a git revision" >&2; exit 2; }
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cache="$(dvc cache dir)"
trees="$(mktemp -d)"
cleanup() {
  for side in base head; do
    [ -d "$trees/$side" ] && git worktree remove --force "$trees/$side"
  done
  rm -rf "$trees"
}
trap cleanup EXIT

materialise() {  # SIDE REV: the revision's outputs, in the shared cache
  git worktree add --quiet --detach "$trees/$1" "$2"
  (
    cd "$trees/$1"
    dvc cache dir --local "$cache"
    # What the remote (or, without one, the cache an earlier run left) has is checked out; a
    # missing piece fails its checkout, and `dvc repro` then runs the stages that lack it.
    if [ -n "$(dvc remote list)" ]; then
      echo "data_review: $1 ($2): pulling, then reproducing what the remote lacks"
      dvc pull --quiet || true
    else
      echo "data_review: $1 ($2): no DVC remote, reproducing what the cache lacks"
      dvc checkout --quiet 2>/dev/null || true
    fi
    dvc repro --quiet
  )
  echo "data_review: $1 ready after ${SECONDS} s"
}
materialise base "$base_rev"
materialise head "$head_rev"

curate compare "$base_rev" "$head_rev" --html "$out/compare.html" >"$out/compare.md"
curate exps --md --rev "$base_rev" --rev "$head_rev" --html "$out/exps.html" >"$out/exps.md"
{
  echo "# curate data review: $base_rev → $head_rev"
  echo
  # compare's Markdown opens with its own title: the comment keeps one title.
  tail -n +2 "$out/compare.md"
  echo
  echo "## Both revisions"
  echo
  cat "$out/exps.md"
} >"$out/comment.md"
echo "data_review: wrote $out/comment.md, $out/compare.html, $out/exps.html"
