// System calls the host needs that Swift's Glibc module does not import.
#ifndef DESCARTES_CDESCARTESHOST_H
#define DESCARTES_CDESCARTESHOST_H

/// getauxval(AT_SECURE): non-zero when the process runs in secure-execution
/// mode (setuid, setgid, or file capabilities), as glibc's secure_getenv sees it.
int descartes_secure_execution(void);

#endif
