// A request the server refuses: the HTTP status and the OpenAI error object's fields
// ({"error": {"message", "type", "param", "code"}}).
#pragma once

#include <string>

#include "gptq/error.h"

namespace gptq::server {

struct ApiError : Error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
      : Error(message), status(status), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string param, code;  // empty: null in the JSON
  // OpenAI's error types by status class.
  const char* type() const {
    return status == 401 ? "authentication_error" : status == 429 ? "rate_limit_error"
           : status >= 500 ? "server_error" : "invalid_request_error";
  }
};

}  // namespace gptq::server
