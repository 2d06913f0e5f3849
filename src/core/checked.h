// Checked arithmetic for sizes and counts that come from untrusted input (file headers, configs,
// command-line options). Every product or sum that sizes an allocation or an offset goes through
// these, so a hostile value ends in one clear error instead of a wrapped size.
#pragma once

#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>

#include "gptq/error.h"

namespace gptq {

// a * b, or gptq::Error "<what>: <a> x <b> overflows".
template <typename T>
T checked_mul(T a, T b, std::string_view what) {
  T r;
  if (__builtin_mul_overflow(a, b, &r)) fail(what, ": ", a, " x ", b, " overflows");
  return r;
}

template <typename T>
T checked_add(T a, T b, std::string_view what) {
  T r;
  if (__builtin_add_overflow(a, b, &r)) fail(what, ": ", a, " + ", b, " overflows");
  return r;
}

// The product of all of `dims` (e.g. a shape), checked; throws when any factor is negative.
template <typename It>
int64_t checked_product(It first, It last, std::string_view what) {
  int64_t r = 1;
  for (; first != last; ++first) {
    if (*first < 0) fail(what, ": negative size ", *first);
    r = checked_mul<int64_t>(r, int64_t(*first), what);
  }
  return r;
}

// Narrows v to T, or gptq::Error "<what>: <v> is out of range".
template <typename T, typename U>
T checked_cast(U v, std::string_view what) {
  if (!std::in_range<T>(v)) fail(what, ": ", v, " is out of range");
  return T(v);
}

}  // namespace gptq
