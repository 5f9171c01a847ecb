#!/usr/bin/env bash
# Make the Debian 12 base image of the Compose bundle without an image registry: debootstrap a
# minimal root file system from the Debian mirror apt already uses, then `docker import` it.
# Cached: does nothing when the image exists. Usage: scripts/compose-base.sh [IMAGE]
# (default iot-debian:bookworm). Where a registry is reachable, the Dockerfiles' default base
# (debian:12-slim) needs none of this.
set -euo pipefail

IMAGE=${1:-iot-debian:bookworm}
DOCKER=${DOCKER:-docker}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "==> base image $IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

# The mirror apt uses (deb822 sources first, then sources.list).
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' | grep -v security | head -1 || true)
if [[ -z "$mirror" ]]; then
  mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/iot-debian.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap bookworm (minbase) from $mirror"
start=$SECONDS
nice -n 19 debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What a container never needs: documentation, manuals, translations, apt's downloaded lists.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
       "$root"/var/cache/apt/archives/*.deb
# Packages installed in images never start services, and keep out what the base dropped.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/01-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/01-no-recommends"
# As Debian's own container images: no package caches (80 MB in every layer that runs apt).
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
chmod 755 "$root"  # mktemp made it 0700: the image's / must be open to its users (postgres)
echo "==> docker import $IMAGE ($(du -sh "$root" | cut -f1))"
tar -C "$root" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "==> base image $IMAGE ready in $((SECONDS - start)) s"
