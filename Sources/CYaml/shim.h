// libyaml, imported as a system library (Debian: libyaml-dev).
#include <yaml.h>
