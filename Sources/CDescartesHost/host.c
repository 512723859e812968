#include "CDescartesHost.h"
#include <sys/auxv.h>

int descartes_secure_execution(void) { return getauxval(AT_SECURE) != 0; }
