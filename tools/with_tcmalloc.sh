#!/usr/bin/env bash
# Run a command with tcmalloc preloaded when the library is installed (see benchmarks/README.md:
# the default allocator made CPU training up to 50x slower on some VMs). Otherwise run it as is.
for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 \
           /usr/lib64/libtcmalloc_minimal.so.4; do
  if [ -f "$lib" ] && [ -z "${FEATDYN_NO_TCMALLOC:-}" ]; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
    break
  fi
done
exec "$@"
