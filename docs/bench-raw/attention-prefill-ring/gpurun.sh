# Sourced by callN.sh on the device machine: unpacks the carried binaries
# into a work dir W, sets LD_LIBRARY_PATH, defines save().
set -u
C=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d /tmp/plumeW.XXXX)
mkdir -p $W/out
for d in bin lib var; do
  [ -d $C/$d ] || continue
  (cd $C && find $d -type f) | while read -r f; do
    mkdir -p $W/$(dirname $f)
    case $f in *.xz) xz -dc $C/$f > $W/${f%.xz};; *) cp $C/$f $W/$f;; esac
    case $f in bin/*) chmod +x $W/${f%.xz};; esac
  done
done
export LD_LIBRARY_PATH=$W/lib
O=$W/out
# Written beside and renamed, so that a call stopped at its limit mid-save
# keeps the last whole archive.
save() {
  (cd $W && tar czf $OUT/results.tgz.part out && mv $OUT/results.tgz.part $OUT/results.tgz) 2>/dev/null
  cp $O/call-summary.txt $O/device.txt $OUT/ 2>/dev/null
}
trap save EXIT
{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > $O/device.txt 2>&1
T0=$(date +%s)
# logged NAME LIBS LIMIT CMD...: CMD run in $O with LD_LIBRARY_PATH=LIBS for at
# most LIMIT seconds, its output in NAME.log under a header line and the
# start time, its exit status and the call's seconds so far in call-summary.txt.
logged() {
  local name=$1 libs=$2 limit=$3
  shift 3
  { echo "## $name: $* (LD_LIBRARY_PATH=$libs)"; date -u +%FT%TZ; } > $O/$name.log
  (cd $O && LD_LIBRARY_PATH=$libs timeout $limit "$@" >> $O/$name.log 2>&1)
  echo "$name rc=$? t=$(( $(date +%s)-T0 ))" >> $O/call-summary.txt
}
