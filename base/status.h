// Error handling for every layer: absl::Status at API boundaries, propagated with macros that can
// add context; DSV4_CHECK for invariants only a bug can break.
//
//   DSV4_RETURN_IF_ERROR(comm.Barrier());
//   DSV4_RETURN_IF_ERROR(LoadTensor(name), "layer ", l, " of ", path);   // "layer 3 of X: <message>"
//   DSV4_ASSIGN_OR_RETURN(auto text, ReadFile(path));
//   DSV4_ASSIGN_OR_RETURN(Config c, ParseConfig(text), "in ", path);
//
// Context is formatted only on the error path (absl::StrCat arguments) and keeps the status code.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dsv4 {

// `status` with "context: " put before its message; the code and payloads are kept.
absl::Status WithContext(const absl::Status& status, absl::string_view context);

namespace status_internal {
inline absl::Status Annotate(absl::Status st) { return st; }
template <typename... Args>
absl::Status Annotate(const absl::Status& st, const Args&... context) {
  return WithContext(st, absl::StrCat(context...));
}
}  // namespace status_internal

}  // namespace dsv4

// Returns the status from the enclosing function if `expr` is not OK, with optional context.
#define DSV4_RETURN_IF_ERROR(expr, ...)                                                         \
  do {                                                                                          \
    if (::absl::Status _dsv4_st = (expr); !_dsv4_st.ok()) {                                     \
      return ::dsv4::status_internal::Annotate(std::move(_dsv4_st) __VA_OPT__(, ) __VA_ARGS__); \
    }                                                                                           \
  } while (0)

#define DSV4_CONCAT_INNER(a, b) a##b
#define DSV4_CONCAT(a, b) DSV4_CONCAT_INNER(a, b)
// `DSV4_ASSIGN_OR_RETURN(auto x, F() [, context...])`: unwraps a StatusOr or returns its status.
#define DSV4_ASSIGN_OR_RETURN(lhs, expr, ...) \
  DSV4_ASSIGN_OR_RETURN_IMPL(DSV4_CONCAT(_dsv4_sor_, __LINE__), lhs, expr __VA_OPT__(, ) __VA_ARGS__)
#define DSV4_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr, ...)                                                        \
  auto tmp = (expr);                                                                                           \
  if (!tmp.ok()) return ::dsv4::status_internal::Annotate(std::move(tmp).status() __VA_OPT__(, ) __VA_ARGS__); \
  lhs = std::move(tmp).value()

// Invariants that only a bug can break: print the expression and location, then abort.
#define DSV4_CHECK(cond, ...)                                                         \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s %s\n", __FILE__, __LINE__, #cond, \
                   ::absl::StrCat("" __VA_OPT__(, ) __VA_ARGS__).c_str());            \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)
