// hiredis, imported as a system library (Debian: libhiredis-dev): the Redis
// client behind the `shared:` section of providers.yaml (docs/scaling.md,
// "Why hiredis").
#include <hiredis/hiredis.h>
