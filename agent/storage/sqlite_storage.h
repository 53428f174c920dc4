// The SQLite store (tiers 1 and 2).
//
// One database file in the data directory, in WAL mode, written in one
// transaction per call through prepared statements. Metrics are stored as
// (id, synced, timestamp, series, value) rows whose series (name + sorted
// labels, compactly encoded) is interned in a dictionary table; logs and
// events as compact blobs (record_codec.h). Per-kind counters live in the same
// transactions as the data, so they are exact after a crash.
//
// Full-storage policy: the store keeps the pages it uses under `max_bytes`.
// When an append would go over (or the disk or file limit is hit), it deletes
// the oldest synced records first, then the oldest set-aside batches (whole
// batches), and only when that is not enough the oldest unsynced records;
// every dropped record is counted (Info().kinds[k]) and logged.
//
// Set-aside batches live in the same database (so they are encrypted with it
// and count against the quota): their records stay in the record tables in a
// set-aside state tagged with the batch, listed in a table of their own.
// RetrySetAside gives the requeued records fresh ids after every record stored
// so far, so no batch read earlier can span them. CleanOlderThan leaves them
// alone: only the operator (retry, drop) or the quota removes them.
//
// Start-up: a database that is corrupt (or encrypted with another key) is moved
// aside to "<file>.corrupt-<UTC time>" with an error log, and a fresh one is
// created; this happens at most once per open, so the agent never crash-loops
// on a bad file. A data directory that cannot be written fails the open with
// FailedPrecondition naming the directory.
#ifndef FLEETD_AGENT_STORAGE_SQLITE_STORAGE_H_
#define FLEETD_AGENT_STORAGE_SQLITE_STORAGE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"
#include "common/config/config.h"

namespace fleetd::agent {

enum class Durability {
  // PRAGMA synchronous=NORMAL: a committed append survives a process crash;
  // a power loss may lose the last transactions but never corrupts the file.
  kNormal,
  // PRAGMA synchronous=FULL: every commit is fsynced (survives power loss).
  kFull,
};

struct SqliteStorageOptions {
  // Directory holding the database; created (mode 0700) when missing.
  std::string data_dir;
  std::string file_name = "fleetd.db";
  // Byte quota for the data (pages in use). At least 64 KiB. Storage::
  // SetMaxBytes changes it at run time (not persisted: the next open uses this
  // value again).
  int64_t max_bytes = 100'000'000;
  Durability durability = Durability::kNormal;
  // SQLCipher passphrase (AES-256). Empty: not encrypted. Needs a build with
  // FLEETD_WITH_SQLCIPHER (see SqliteEncryptionAvailable()).
  std::string encryption_key;
  // Hard cap on the database file size (SQLite max_page_count), a backstop
  // behind the quota. 0: the quota in force plus an eighth (at least 1 MiB),
  // following SetMaxBytes (never below the file's current size: the file does
  // not shrink, freed pages are reused). Tests set it below max_bytes to
  // simulate a full disk.
  int64_t file_limit_bytes = 0;
  // Run PRAGMA quick_check at open (cost grows with the file size).
  bool verify_on_open = true;
  // Timestamps for unstamped records and the clean cutoff. Not owned; must
  // outlive the store. nullptr: Clock::Real().
  Clock* clock = nullptr;
  // Warnings and errors. Empty: StderrStorageLog().
  StorageLogFn log;
};

// Opens (creating or migrating) the store. Errors: InvalidArgument for bad
// options; FailedPrecondition when the data directory is not writable, the
// file was written by a newer agent (schema version too new), or a key is
// given to a build without SQLCipher; the SQLite error otherwise.
absl::StatusOr<std::unique_ptr<Storage>> OpenSqliteStorage(
    const SqliteStorageOptions& options);

// Whether this build links SQLCipher, so encryption_key can be used.
bool SqliteEncryptionAvailable();

// The storage key from the environment: FLEET_STORAGE_KEY (the passphrase) or
// FLEET_STORAGE_KEY_FILE (a file holding it; surrounding whitespace is
// trimmed). Empty when neither is set. InvalidArgument naming the variable when
// both are set, the file cannot be read, or the key is empty.
absl::StatusOr<std::string> ResolveStorageKey(const EnvLookup& env);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_STORAGE_SQLITE_STORAGE_H_
