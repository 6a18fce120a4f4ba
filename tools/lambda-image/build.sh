#!/usr/bin/env bash
# Build (once) a local stand-in for the AWS Lambda python3.13 x86_64 base image and
# import it into podman under the tag `sam local invoke` asks for, so that
# `sam local invoke --skip-pull-image` works with no registry and no Docker.
#
# Idempotent: every step is skipped when its result is already there.
#   - apt packages (podman runc debootstrap uidmap iproute2 ...), `apt-get update` only if
#     the install fails without it;
#   - the rootfs (debootstrap Debian trixie, which has python3.13, + awslambdaric + boto3
#     in /var/runtime + /var/runtime/bootstrap) under $HARMONY_LAMBDA_CACHE, keyed by a hash
#     of the recipe (RECIPE, suite, python, pip packages), so a recipe change rebuilds it;
#   - the podman image (labelled with the same key; re-imported when the key differs).
#
# Env:
#   HARMONY_LAMBDA_CACHE   cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/harmony-lambda-image)
#   HARMONY_LAMBDA_IMAGE   image tag (default public.ecr.aws/lambda/python:3.13-x86_64,
#                          the one sam 1.170 asks for runtime python3.13 / x86_64)
#   HARMONY_DEBIAN_MIRROR  Debian mirror (default: the one apt's sources on this machine name)
#   HARMONY_PY313          a host python3.13 with pip, used for `pip install --target`
#                          (default: pyenv's 3.13.0; falls back to pip inside the rootfs)
#   CONTAINERS_CONF        podman config (default: tools/lambda-image/containers.conf)
# Needs root (debootstrap, podman's rootful storage). CI runs as root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
CACHE="${HARMONY_LAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/harmony-lambda-image}"
IMAGE="${HARMONY_LAMBDA_IMAGE:-public.ecr.aws/lambda/python:3.13-x86_64}"
SUITE=trixie
PY_VER=3.13
PIP_PKGS=(awslambdaric boto3)

log() { printf '[lambda-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, rootful podman)"

# ---------------------------------------------------------------- apt packages
ensure_apt() {
  local missing=() cmd pkg
  # command:package
  for pair in podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap \
              unshare:util-linux ip:iproute2 timeout:coreutils; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # netavark/aardvark are pulled by podman; fuse-overlayfs is a fallback for overlay.
  dpkg -s fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  if ! timeout 900 "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    log "apt-get install failed; running apt-get update first"
    timeout 600 "${apt[@]}" update >/dev/null
    timeout 900 "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # podman needs runc as OCI runtime here; conmon comes as a dependency.
  command -v podman >/dev/null && command -v runc >/dev/null || die "podman/runc missing after install"
}

# ---------------------------------------------------------------- mirror
debian_mirror() {
  if [ -n "${HARMONY_DEBIAN_MIRROR:-}" ]; then echo "$HARMONY_DEBIAN_MIRROR"; return; fi
  local m
  # deb822 (.sources) "URIs:" lines, then one-line "deb URL suite" entries; take the first
  # that is a Debian archive (not the security one).
  m="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1)=="uris:" {for(i=2;i<=NF;i++) print $i}' \
        | grep -E '/debian/?$' | grep -v security | head -n1 || true)"
  if [ -z "$m" ]; then
    m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1=="deb" {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; break}}' \
          | grep -E '/debian/?$' | grep -v security | head -n1 || true)"
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# ---------------------------------------------------------------- rootfs
# Bump RECIPE when build_rootfs/import_image change in a way that alters the image.
RECIPE=1
KEY="$(echo "$RECIPE $SUITE $PY_VER ${PIP_PKGS[*]} $(uname -m)" | sha256sum | cut -c1-16)"
ROOTFS="$CACHE/rootfs-$KEY"

host_py313() {
  local c
  for c in "${HARMONY_PY313:-}" /root/.pyenv/versions/3.13.0/bin/python3.13 \
           "$HOME/.pyenv/versions/3.13.0/bin/python3.13" "$(command -v python3.13 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && "$c" -m pip --version >/dev/null 2>&1 && { echo "$c"; return 0; }
  done
  return 1
}

build_rootfs() {
  local mirror tmp py
  mirror="$(debian_mirror)"
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/tmp-rootfs.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  log "debootstrap $SUITE (minbase) from $mirror into $tmp"
  local t0=$SECONDS
  if ! timeout 1200 debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
        "$SUITE" "$tmp" "$mirror" > "$CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  log "debootstrap done in $((SECONDS - t0)) s"
  local v
  v="$(chroot "$tmp" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$v" = "$PY_VER" ] || die "rootfs python is $v, want $PY_VER"

  mkdir -p "$tmp/var/runtime" "$tmp/var/task" "$tmp/opt" "$tmp/var/rapid"
  t0=$SECONDS
  if py="$(host_py313)"; then
    log "pip install --target /var/runtime ${PIP_PKGS[*]} (with $py)"
    timeout 900 "$py" -m pip install -q --disable-pip-version-check --no-compile --root-user-action=ignore \
      --target "$tmp/var/runtime" --python-version "$PY_VER" --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --only-binary=:all: \
      "${PIP_PKGS[@]}" 2> >(grep -v 'is ignored: it is neither' >&2)
  else
    log "no host python$PY_VER with pip; using pip inside the rootfs"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    timeout 900 chroot "$tmp" python3 -m pip install -q --break-system-packages --no-compile \
      --target /var/runtime "${PIP_PKGS[@]}"
  fi
  log "pip done in $((SECONDS - t0)) s"
  # Precompile with the image's own python so cold starts do not compile awslambdaric/boto3.
  chroot "$tmp" python3 -m compileall -q -j 1 /var/runtime >/dev/null || true

  cat > "$tmp/var/runtime/bootstrap" <<'BOOT'
#!/bin/sh
# Lambda custom-runtime entry point started by the Runtime Interface Emulator.
export PYTHONPATH="/var/task:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
cd "${LAMBDA_TASK_ROOT:-/var/task}"
exec /usr/bin/python3 -m awslambdaric "$_HANDLER"
BOOT
  chmod 755 "$tmp/var/runtime/bootstrap"
  # Lambda images keep python at /var/lang/bin; some tooling (sam debug settings) uses it.
  mkdir -p "$tmp/var/lang/bin"
  ln -sf /usr/bin/python3 "$tmp/var/lang/bin/python3.13"
  ln -sf /usr/bin/python3 "$tmp/var/lang/bin/python3"
  ln -sf /usr/bin/python3 "$tmp/var/lang/bin/python"
  # Slim it: apt lists/caches, docs, man pages, locales.
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"* \
         "$tmp/usr/share/doc/"* "$tmp/usr/share/man/"* "$tmp/usr/share/info/"* \
         "$tmp/usr/share/locale/"* 2>/dev/null || true
  : > "$tmp/etc/resolv.conf"
  echo "$KEY" > "$tmp/.harmony-lambda-image-key"

  rm -rf "$ROOTFS"
  mv "$tmp" "$ROOTFS"
  trap - EXIT
  # Drop rootfs builds of older keys.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$KEY" -exec rm -rf {} + 2>/dev/null || true
  find "$CACHE" -maxdepth 1 -name 'tmp-rootfs.*' -exec rm -rf {} + 2>/dev/null || true
  log "rootfs ready: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

# ---------------------------------------------------------------- podman image
image_key() {
  podman image inspect --format '{{ index .Config.Labels "harmony.lambda-image.key" }}' "$IMAGE" 2>/dev/null || true
}

import_image() {
  log "importing rootfs into podman as $IMAGE"
  local t0=$SECONDS
  tar --numeric-owner -C "$ROOTFS" -c . | podman import \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV TZ=:/etc/localtime" \
    --change "ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin" \
    --change "ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib" \
    --change "ENV LAMBDA_TASK_ROOT=/var/task" \
    --change "ENV LAMBDA_RUNTIME_DIR=/var/runtime" \
    --change "WORKDIR /var/task" \
    --change "ENTRYPOINT [\"/var/runtime/bootstrap\"]" \
    --change "LABEL harmony.lambda-image.key=$KEY" \
    --quiet - "$IMAGE" >/dev/null
  log "imported in $((SECONDS - t0)) s"
  # Old SAM "rapid" images were built on top of a previous base: drop them so SAM rebuilds.
  podman images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^(public\.ecr\.aws/lambda/python:3\.13-rapid-|samcli/lambda-python:3\.13)' \
    | xargs -r podman rmi -f >/dev/null 2>&1 || true
}

main() {
  local t0=$SECONDS
  ensure_apt
  if [ ! -f "$ROOTFS/.harmony-lambda-image-key" ]; then
    build_rootfs
  else
    log "rootfs cached: $ROOTFS"
  fi
  if [ "$(image_key)" != "$KEY" ]; then
    import_image
  else
    log "image present: $IMAGE (key $KEY)"
  fi
  log "done in $((SECONDS - t0)) s"
}

main "$@"
