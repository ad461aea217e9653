#!/usr/bin/env bash
# Regenerate profiles/bundled.yaml: the bundled model's calibration extended with its measured profile.
# Run after the bundled model or its datasets change; CI's regression gate compares against this file.
set -euo pipefail
cd "$(dirname "$0")/.."
vtw calibrate --output profiles/bundled.yaml --force
vtw profile --profile profiles/bundled.yaml --force --threads 1 --max-time 120
vtw check profiles/bundled.yaml
