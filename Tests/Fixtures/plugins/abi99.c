/* Test fixture: answers an ABI version newer than the host offered. */
#include <descartes/plugin.h>
static const descartes_library_t lib = {sizeof(descartes_library_t), 99, "abi99", "0.0.1", 0, NULL, NULL};
DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    (void)v; (void)host;
    return &lib;
}
