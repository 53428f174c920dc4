// Error-propagation macros for absl::Status, which Abseil 20220623 does not
// provide.
#ifndef FLEETD_COMMON_STATUS_STATUS_MACROS_H_
#define FLEETD_COMMON_STATUS_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if
// not OK.
#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::absl::Status fleetd_status_macro_status_ = (expr); \
    if (!fleetd_status_macro_status_.ok()) {             \
      return fleetd_status_macro_status_;                \
    }                                                    \
  } while (false)

#define FLEETD_STATUS_CONCAT_INNER_(x, y) x##y
#define FLEETD_STATUS_CONCAT_(x, y) FLEETD_STATUS_CONCAT_INNER_(x, y)

#define FLEETD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) {                                     \
    return std::move(statusor).status();                    \
  }                                                         \
  lhs = *std::move(statusor)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the enclosing function, otherwise move-assigns the value to `lhs`, which may
// be a declaration:
//   ASSIGN_OR_RETURN(std::string body, ReadBody());
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  FLEETD_ASSIGN_OR_RETURN_IMPL_(     \
      FLEETD_STATUS_CONCAT_(fleetd_statusor_, __LINE__), lhs, rexpr)

#endif  // FLEETD_COMMON_STATUS_STATUS_MACROS_H_
