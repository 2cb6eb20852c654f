// Error handling helpers: absl::Status at API boundaries, CHECK for programmer errors.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

// Returns the status from the enclosing function if `expr` is not OK.
#define DSV4_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    if (::absl::Status _st = (expr); !_st.ok()) {  \
      return _st;                                  \
    }                                              \
  } while (0)

#define DSV4_CONCAT_INNER(a, b) a##b
#define DSV4_CONCAT(a, b) DSV4_CONCAT_INNER(a, b)
// `DSV4_ASSIGN_OR_RETURN(auto x, F())`: unwraps a StatusOr or returns its status.
#define DSV4_ASSIGN_OR_RETURN(lhs, expr) DSV4_ASSIGN_OR_RETURN_IMPL(DSV4_CONCAT(_sor_, __LINE__), lhs, expr)
#define DSV4_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

// Invariants that only a bug can break: print the expression and location, then abort.
#define DSV4_CHECK(cond, ...)                                                                    \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s %s\n", __FILE__, __LINE__, #cond,            \
                   ::absl::StrCat("" __VA_OPT__(, ) __VA_ARGS__).c_str());                       \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)
