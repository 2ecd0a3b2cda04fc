#!/usr/bin/env bash
# Fresh Debian 12 machine -> dependencies installed, hpcq built, main job run on bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
bash tools/main-job.sh
