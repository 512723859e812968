// Compiles the ABI header once as part of the build, so a header that does
// not compile as C fails the build, not a plugin author.
#include "descartes/plugin.h"

_Static_assert(DESCARTES_ABI_VERSION == 1u, "this tree implements ABI version 1");
_Static_assert(offsetof(descartes_event_t, struct_size) == 0, "struct_size comes first");
_Static_assert(offsetof(descartes_backend_t, struct_size) == 0, "struct_size comes first");
_Static_assert(offsetof(descartes_host_t, struct_size) == 0, "struct_size comes first");
_Static_assert(offsetof(descartes_factory_t, struct_size) == 0, "struct_size comes first");
_Static_assert(offsetof(descartes_library_t, struct_size) == 0, "struct_size comes first");
_Static_assert(offsetof(descartes_create_args_t, struct_size) == 0, "struct_size comes first");
