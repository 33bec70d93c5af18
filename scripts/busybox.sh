#!/usr/bin/env bash
# busybox.sh: fetch a static busybox for the image into build/busybox (or $1).
#
# It comes from Debian's busybox-static package (`apt-get download`, then
# `dpkg-deb -x`), so it needs apt but no image registry. The result is cached:
# an existing executable at the destination is kept (rm it, or `make
# clean-image`, to fetch again). When the download fails, the package lists
# are refreshed once with `apt-get update` (a fresh machine may have none) and
# the download is retried.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-build/busybox}
if [ -x "$dest" ] && "$dest" true 2>/dev/null; then
	echo "busybox: cached at $dest ($("$dest" 2>&1 | head -1 | awk '{print $1, $2}'))"
	exit 0
fi

for tool in apt-get dpkg-deb; do
	command -v "$tool" >/dev/null || {
		echo "busybox: $tool not found; put a static busybox at $dest by hand" >&2
		exit 1
	}
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download runs as the unprivileged _apt user when it can; let it write.
chmod 0777 "$tmp"

download() { (cd "$tmp" && apt-get download -q busybox-static); }
if ! download; then
	echo "busybox: download failed; running apt-get update and retrying once" >&2
	apt-get update -q
	download
fi

deb=$(ls "$tmp"/busybox-static_*.deb)
dpkg-deb -x "$deb" "$tmp/root"
bb="$tmp/root/bin/busybox"
[ -x "$bb" ] || { echo "busybox: $deb has no /bin/busybox" >&2; exit 1; }
# A dynamically linked busybox would not run in a scratch image.
if command -v file >/dev/null && ! file -L "$bb" | grep -Eq 'statically linked|static-pie linked'; then
	echo "busybox: $bb is not statically linked" >&2
	exit 1
fi
mkdir -p "$(dirname "$dest")"
install -m 0755 "$bb" "$dest"
echo "busybox: $(basename "$deb") -> $dest"
