/* Test fixture: refuses the negotiation. */
#include <descartes/plugin.h>
DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    static const char msg[] = "refusing: this fixture speaks no ABI version";
    if (host && host->log) host->log(host, DESCARTES_LOG_WARNING, msg, sizeof msg - 1);
    (void)v;
    return NULL;
}
