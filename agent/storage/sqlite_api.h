// The sqlite3 C API: SQLCipher's drop-in build when FLEETD_WITH_SQLCIPHER is
// on (FLEETD_HAVE_SQLCIPHER, SQLITE_HAS_CODEC defined), plain SQLite
// otherwise. Never both in one binary: they export the same symbols.
#ifndef FLEETD_AGENT_STORAGE_SQLITE_API_H_
#define FLEETD_AGENT_STORAGE_SQLITE_API_H_

#ifdef FLEETD_HAVE_SQLCIPHER
#include <sqlcipher/sqlite3.h>
#else
#include <sqlite3.h>
#endif

#endif  // FLEETD_AGENT_STORAGE_SQLITE_API_H_
