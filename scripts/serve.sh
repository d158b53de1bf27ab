#!/usr/bin/env bash
# Start the server, setting up whatever is missing first. Options go to `livestyle serve`
# (see --help), e.g. scripts/serve.sh --port 8080 --engine preview
set -euo pipefail
exec "$(dirname "$0")/livestyle" serve "$@"
