/* Test fixture: a shared object without the entry symbol. */
#include <descartes/plugin.h>
DESCARTES_EXPORT int descartes_something_else(void);
DESCARTES_EXPORT int descartes_something_else(void) { return 42; }
