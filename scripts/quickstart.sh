#!/usr/bin/env bash
# The main job: mount the local store and show a stored snapshot through it.
# Stores a small sample directory, mounts the store at $KACHERY_MOUNT
# (default ~/kachery) in the background, and lists the snapshot there.
set -euo pipefail

mountpoint="${KACHERY_MOUNT:-$HOME/kachery}"
sample="$(mktemp -d)/kachery-sample"
mkdir -p "$sample/data"
printf 'x,y\n1,2\n3,4\n' > "$sample/data/points.csv"
printf 'Stored with kachery on %s\n' "$(date -u +%F)" > "$sample/README.txt"

url="$(kachery-store "$sample")"
echo "stored $sample as $url"

mkdir -p "$mountpoint"
if ! mountpoint -q "$mountpoint"; then
  kachery-mount --background "$mountpoint"
fi
path="$mountpoint/sha1dir/${url#sha1dir://}"
echo
echo "ls -l $path/data:"
ls -l "$path/data"
echo
echo "Try:   cat $path/data/points.csv"
echo "Stop:  kachery-unmount $mountpoint"
