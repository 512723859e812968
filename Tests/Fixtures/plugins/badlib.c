/* Test fixture: a library description claiming factories it does not have. */
#include <descartes/plugin.h>
static const descartes_library_t lib = {sizeof(descartes_library_t), 1, "badlib", "0.0.1", 3, NULL, NULL};
DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    (void)v; (void)host;
    return &lib;
}
