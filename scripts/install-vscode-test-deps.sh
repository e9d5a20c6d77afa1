#!/usr/bin/env bash
# Installs what the VS Code extension's tests need on a fresh Debian 12
# machine (root, package registries only): Chromium, ripgrep, libkrb5-dev and
# a C toolchain from apt, the extension's npm dependencies, and code-server 4.100.3 outside
# the repository. Idempotent: a second run only checks.
#
# Why the odd steps:
# - code-server's postinstall refuses root without npm_config_unsafe_perm, and
#   node-pty's postinstall runs `npx node-gyp`, which needs npm_config_yes.
# - @vscode/ripgrep 1.15.11 downloads rg from GitHub unless its cache already
#   holds the tarball, so the cache is filled from Debian's ripgrep.
# - Native modules build from source against the local node headers; one of
#   them (kerberos) needs libkrb5-dev.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
code_server_version=4.100.3
code_server_dir="${PODLOOP_CODE_SERVER_DIR:-${HOME}/.cache/podloop/code-server-${code_server_version}}"

log() { echo "install-vscode-test-deps: $*"; }

# --- apt -------------------------------------------------------------------
need=()
# build-essential and python3: node-gyp builds code-server's native modules;
# busybox-static: the e2e test's kubesim pod runs the busybox image.
for pkg in chromium ripgrep libkrb5-dev build-essential python3 busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- the extension's own dependencies --------------------------------------
ext="${repo}/editors/vscode"
if [ ! -f "${ext}/node_modules/.package-lock.json" ] || [ "${ext}/package-lock.json" -nt "${ext}/node_modules/.package-lock.json" ]; then
  log "npm ci in editors/vscode"
  (cd "$ext" && npm ci --no-audit --no-fund)
fi

# --- ripgrep cache for @vscode/ripgrep --------------------------------------
case "$(uname -m)" in
  x86_64) rg_triple=x86_64-unknown-linux-musl ;;
  aarch64) rg_triple=aarch64-unknown-linux-musl ;;
  *) echo "install-vscode-test-deps: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
rg_cache="${TMPDIR:-/tmp}/vscode-ripgrep-cache-1.15.11"
rg_tarball="${rg_cache}/ripgrep-v13.0.0-10-${rg_triple}.tar.gz"
if [ ! -s "$rg_tarball" ]; then
  log "filling the @vscode/ripgrep cache from $(command -v rg)"
  mkdir -p "$rg_cache"
  tar czf "${rg_tarball}.part" -C "$(dirname "$(command -v rg)")" rg
  mv "${rg_tarball}.part" "$rg_tarball"
fi

# --- code-server -------------------------------------------------------------
code_server_bin="${code_server_dir}/node_modules/.bin/code-server"
if ! "$code_server_bin" --version 2>/dev/null | grep -q "^${code_server_version} "; then
  log "installing code-server ${code_server_version} into ${code_server_dir} (a few minutes: native modules build from source)"
  mkdir -p "$code_server_dir"
  (
    cd "$code_server_dir"
    [ -f package.json ] || echo '{"name":"podloop-code-server","private":true}' > package.json
    npm_config_unsafe_perm=true npm_config_yes=true \
      npm install --no-audit --no-fund --save-exact "code-server@${code_server_version}"
  )
  "$code_server_bin" --version | grep -q "^${code_server_version} " || {
    echo "install-vscode-test-deps: code-server did not install into ${code_server_dir}" >&2
    exit 1
  }
fi
log "ready: chromium $(command -v chromium), code-server ${code_server_bin}"
