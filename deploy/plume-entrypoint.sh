#!/bin/sh
# The image's entrypoint: runs plume-server on 0.0.0.0:50051 (gRPC) and
# 0.0.0.0:9464 (metrics) with the arguments given, storing matrices in
# $PLUME_STORE_DIR (default /var/lib/plume, the image's volume).
#
# The store flag is passed only when this plume-server has it (--store_dir
# arrives with the durable store); an empty PLUME_STORE_DIR never passes it.
# Flags given as arguments come last and so win over these defaults.
set -eu
server=/opt/plume/bin/plume-server
store=${PLUME_STORE_DIR-/var/lib/plume}
if [ -n "$store" ] && "$server" --helpfull 2>/dev/null | grep -q -- '--store_dir'; then
  set -- "--store_dir=$store" "$@"
fi
exec "$server" --grpc_address=0.0.0.0:50051 --metrics_address=0.0.0.0:9464 "$@"
