#!/usr/bin/env bash
# Installs the system packages the local stack needs (Debian/Ubuntu): Redis and Prometheus
# from Debian's packages, and headless Chromium with its driver for the console's browser
# tests; checks for Java 17+, Maven and Go (Kafka's jars and MinIO's
# source are fetched by `fraud up`, not here).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's packages start system-wide services on install where an init system runs;
  # the project runs its own instances on its own ports, so the system ones are not needed.
fi
for tool in java mvn go; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (Java 17+, Maven, Go)" >&2; exit 1; }
done
