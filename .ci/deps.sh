#!/bin/sh
# Installs the Debian 12 packages vqlua builds and tests with. Idempotent.
set -eu
PKGS="build-essential cmake pkg-config git \
  liblua5.4-dev lua5.4 libuv1-dev lua-luv-dev libcurl4-openssl-dev libyaml-dev libcjson-dev \
  libssl-dev libedit-dev libc-ares-dev libwebsockets-dev lua-busted lua-cjson tmux openssl nginx-light curl dnsutils bc time"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
