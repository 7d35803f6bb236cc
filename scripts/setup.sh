#!/usr/bin/env bash
# Installs what building and testing the project needs on a fresh
# Debian/Ubuntu machine. Idempotent: a second run changes nothing and
# returns in well under a second once everything is there.
set -euo pipefail

packages=(libdqlite-dev libraft-dev libuv1-dev libsqlite3-dev liblz4-dev iproute2 nftables gcc pkg-config)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}" >&2
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		sudo="sudo"
	fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH="/usr/local/go/bin:$PATH"
	else
		echo "setup: Go is not installed; install Go 1.26 or newer (https://go.dev/doc/install)" >&2
		exit 1
	fi
fi

cd "$(dirname "$0")/.."
go mod download
