// Small helpers for absl::Status plumbing in server/core.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PLUME_STATUS_CONCAT_INNER(a, b) a##b
#define PLUME_STATUS_CONCAT(a, b) PLUME_STATUS_CONCAT_INNER(a, b)

#define PLUME_RETURN_IF_ERROR(expr)           \
  do {                                        \
    ::absl::Status _plume_status = (expr);    \
    if (!_plume_status.ok()) return _plume_status; \
  } while (0)

#define PLUME_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(*tmp)

#define PLUME_ASSIGN_OR_RETURN(lhs, expr) \
  PLUME_ASSIGN_OR_RETURN_IMPL(PLUME_STATUS_CONCAT(_plume_statusor_, __LINE__), lhs, expr)
