// gptq serve driven as a user drives it: the real binary on a free loopback port, real HTTP
// clients (httplib::Client, and curl when /usr/bin/curl exists).
#include <gtest/gtest.h>
#include <httplib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cli_runner.h"
#include "server_process.h"
#include "shared_paths.h"

namespace {

using gptq_test::run_cli;
using gptq_test::slurp;
using gptq_test::ServerProcess;
using gptq_test::post;
using nlohmann::json;


// A streamed completion: the text of its chunks, and the last data line before [DONE].
struct Streamed {
  std::string text, finish_reason;
  bool done = false;
  json last;
  int status = 0;     // the HTTP status (0: no response)
  std::string error;  // httplib's error when the exchange failed, else the non-event body
};
// stop_after: the client closes the connection after that many chunks (0: read to the end).
Streamed stream(const ServerProcess& s, const std::string& path, const json& body, int stop_after = 0,
                const std::function<void()>& on_first_chunk = {}) {
  Streamed out;
  std::string buf;
  int chunks = 0;
  auto c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    buf.append(d, n);
    for (size_t e; (e = buf.find("\n\n")) != std::string::npos; buf.erase(0, e + 2)) {
      const std::string line = buf.substr(0, e);
      if (line.rfind("data: ", 0) != 0) continue;
      if (line == "data: [DONE]") {
        out.done = true;
        continue;
      }
      json j = json::parse(line.substr(6));
      for (const auto& ch : j["choices"]) {
        if (ch.contains("text")) out.text += ch["text"].get<std::string>();
        if (ch.contains("delta") && ch["delta"].contains("content")) out.text += ch["delta"]["content"].get<std::string>();
        if (!ch["finish_reason"].is_null()) out.finish_reason = ch["finish_reason"];
      }
      out.last = j;
      if (++chunks == 1 && on_first_chunk) on_first_chunk();
      if (stop_after > 0 && chunks >= stop_after) return false;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  if (c.send(req, res, err)) out.status = res.status;
  else if (stop_after == 0 || chunks < stop_after) out.error = httplib::to_string(err);
  if (out.error.empty() && out.last.is_null()) out.error = buf;  // an error object instead of events
  return out;
}

// /metrics as name{labels} -> value, after checking every line against the text format.
std::map<std::string, double> metrics(const ServerProcess& s) {
  auto r = s.client().Get("/metrics");
  EXPECT_TRUE(r && r->status == 200);
  std::map<std::string, double> out;
  if (!r) return out;
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?) (\S+)$)");
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, comment)) continue;
    EXPECT_TRUE(std::regex_match(line, m, sample)) << "not Prometheus text: " << line;
    if (m.size() > 4) out[m[1]] = m[4] == "+Inf" ? INFINITY : std::stod(m[4]);
  }
  return out;
}

void expect_healthy_then_exit_zero(ServerProcess& s) {
  auto h = s.client().Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(s.terminate(), 0) << s.log();
}

json completion(const std::string& prompt, int max_tokens) {
  return {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

TEST(Serve, CompletionsEqualGenerateAlone) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  const auto gen = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "24", "--temperature", "0", "--json", "-t", "1"});
  ASSERT_EQ(gen.rc, 0) << gen.err;
  const std::string expected = json::parse(gen.out)["text"];
  ServerProcess s(m, {});
  ASSERT_GT(s.port(), 0) << s.log();
  int status = 0;
  json r = post(s, "/v1/completions", completion("Once upon a time", 24).dump(), &status);
  ASSERT_EQ(status, 200) << r;
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "babyllama-361");
  EXPECT_EQ(r["choices"][0]["text"], expected);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["completion_tokens"], 24);
  EXPECT_EQ(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"].get<int>() + 24);

  json body = completion("Once upon a time", 24);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const Streamed st = stream(s, "/v1/completions", body);
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.text, expected);
  EXPECT_EQ(st.finish_reason, "length");
  EXPECT_EQ(st.last["usage"]["completion_tokens"], 24);

  // Logprobs: one per token, the top alternative first, and the greedy token is the top one.
  body = completion("Once upon a time", 4);
  body["logprobs"] = 2;
  r = post(s, "/v1/completions", body.dump(), &status);
  ASSERT_EQ(status, 200) << r;
  const json& lp = r["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    EXPECT_EQ(lp["top_logprobs"][i].size(), 2u);
  }

  // A stop string ends the text before it.
  body = completion("Once upon a time", 24);
  body["stop"] = expected.substr(6, 3);
  r = post(s, "/v1/completions", body.dump(), &status);
  ASSERT_EQ(status, 200) << r;
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(expected.rfind(r["choices"][0]["text"].get<std::string>(), 0), 0u);

  if (access("/usr/bin/curl", X_OK) == 0) {  // curl, streaming
    const std::string cmd = "/usr/bin/curl -sN http://127.0.0.1:" + std::to_string(s.port()) +
                            "/v1/completions -H 'Content-Type: application/json' -d '" +
                            R"({"prompt":"Once upon a time","max_tokens":5,"stream":true})" + "'";
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    EXPECT_EQ(pclose(p), 0);
    EXPECT_NE(out.find("data: [DONE]\n\n"), std::string::npos) << out;
  }
  EXPECT_EQ(s.terminate(), 0) << s.log();
}

// --synthetic: random weights of a real architecture's shapes behind the real API (how serving
// speed is measured without the weights), with another model's tokenizer; and its usage errors.
TEST(Serve, SyntheticModelServesCompletions) {
  SHARED_MODEL_OR_SKIP(tok, "llama-gutenberg-22m");
  ServerProcess s("", {"--synthetic", "llama2-7b", "--layers", "1", "--bits", "4", "--tokenizer", tok, "--device", "cpu",
                       "-c", "128", "--max-batch", "2"});
  ASSERT_GT(s.port(), 0) << s.log();
  int status = 0;
  json r = post(s, "/v1/completions", completion("Once upon a time", 6).dump(), &status);
  ASSERT_EQ(status, 200) << r;
  EXPECT_EQ(r["model"], "synthetic:llama2-7b");
  EXPECT_GE(r["usage"]["prompt_tokens"].get<int>(), 4);
  EXPECT_LE(r["usage"]["completion_tokens"].get<int>(), 6);
  EXPECT_GE(r["usage"]["completion_tokens"].get<int>(), 1);
  auto models = s.client().Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "synthetic:llama2-7b");
  EXPECT_EQ(s.terminate(), 0) << s.log();

  auto bad = run_cli({"serve", "--synthetic", "llama2-7b", "--port", "0"});
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("--tokenizer"), std::string::npos) << bad.err;
  bad = run_cli({"serve", "--port", "0"});
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("-m MODEL or --synthetic"), std::string::npos) << bad.err;
  bad = run_cli({"serve", "--synthetic", "tiny", "--tokenizer", tok, "--device", "cpu", "--port", "0"});
  EXPECT_NE(bad.rc, 0);  // 32000 tokens for a vocabulary of 512
  EXPECT_NE(bad.err.find("vocabulary of 512"), std::string::npos) << bad.err;
  bad = run_cli({"serve", "--synthetic", "tiny", "--tokenizer", tok, "--prefill-chunk", "0", "--port", "0"});
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("--prefill-chunk"), std::string::npos) << bad.err;
}

TEST(Serve, SixteenConcurrentStreamsEqualTheirAloneRuns) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  ServerProcess s(m, {"--max-batch", "16"});
  ASSERT_GT(s.port(), 0) << s.log();
  std::vector<std::string> prompts, alone(16);
  for (int i = 0; i < 16; ++i) prompts.push_back(std::string(size_t(1 + i % 5), "Tom saw a dog. Lily"[i % 19]) + " went to the park " + std::to_string(i));
  for (int i = 0; i < 16; ++i) {
    int status = 0;
    json r = post(s, "/v1/completions", completion(prompts[size_t(i)], 16 + i).dump(), &status);
    ASSERT_EQ(status, 200) << r;
    alone[size_t(i)] = r["choices"][0]["text"];
  }
  std::vector<Streamed> together(16);
  std::vector<std::thread> clients;
  for (int i = 0; i < 16; ++i)
    clients.emplace_back([&, i] {
      json body = completion(prompts[size_t(i)], 16 + i);
      body["stream"] = true;
      together[size_t(i)] = stream(s, "/v1/completions", body);
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(together[size_t(i)].done) << i;
    EXPECT_EQ(together[size_t(i)].text, alone[size_t(i)]) << "stream " << i;
  }
  EXPECT_EQ(s.terminate(), 0);
}

// A prompt longer than the 256-token prefill chunk is prefilled over several steps, while another
// stream decodes; its greedy text is still the one generate gives for it alone.
TEST(Serve, ChunkedPrefillEqualsGenerateAlone) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "The sea was calm and the ship sailed on. ";
  const auto gen = run_cli({"generate", "-m", m, "-p", prompt, "-n", "12", "--temperature", "0", "--json", "-t", "1"});
  ASSERT_EQ(gen.rc, 0) << gen.err;
  const json expected = json::parse(gen.out);
  ASSERT_GT(expected["prompt_ids"].size(), 512u);
  // The default chunk (256 tokens per step: the prompt in 3) and chunks of 37 (17 of them, ragged).
  for (const char* chunk : {"256", "37"}) {
    SCOPED_TRACE(std::string("--prefill-chunk ") + chunk);
    ServerProcess s(m, {"--prefill-chunk", chunk});
    ASSERT_GT(s.port(), 0) << s.log();
    json other = completion("Once upon a time", 64);
    other["stream"] = true;
    json r;
    int status = 0;
    stream(s, "/v1/completions", other, 0, [&] { r = post(s, "/v1/completions", completion(prompt, 12).dump(), &status); });
    ASSERT_EQ(status, 200) << r;
    EXPECT_EQ(r["usage"]["prompt_tokens"], expected["prompt_ids"].size());
    EXPECT_EQ(r["choices"][0]["text"], expected["text"]);
    EXPECT_EQ(s.terminate(), 0);
  }
}

TEST(Serve, BadRequestsAreOpenAiErrors) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  ServerProcess s(m, {});
  ASSERT_GT(s.port(), 0) << s.log();
  auto expect_error = [&](const std::string& path, const std::string& body, int want, const std::string& needle,
                          const std::string& param = "") {
    int status = 0;
    json r = post(s, path, body, &status);
    EXPECT_EQ(status, want) << body << " -> " << r;
    ASSERT_TRUE(r.contains("error")) << r;
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(r["error"].contains(k)) << r;
    EXPECT_NE(r["error"]["message"].get<std::string>().find(needle), std::string::npos) << r;
    if (!param.empty()) {
      EXPECT_EQ(r["error"]["param"], param) << r;
    }
  };
  expect_error("/v1/completions", "{\"prompt\": ", 400, "malformed JSON");
  expect_error("/v1/completions", "[1, 2]", 400, "JSON object");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": "ten"})", 400, "integer", "max_tokens");
  expect_error("/v1/completions", R"({"prompt": "a", "temperature": "hot"})", 400, "number", "temperature");
  expect_error("/v1/completions", R"({"prompt": "a", "stop": 3})", 400, "string", "stop");
  expect_error("/v1/completions", R"({"prompt": 7})", 400, "string or a list of token ids", "prompt");
  expect_error("/v1/completions", R"({"prompt": [1, 99999]})", 400, "vocabulary", "prompt");
  expect_error("/v1/completions", R"({"prompt": "a", "n": 2})", 400, "must be 1", "n");
  expect_error("/v1/completions", R"({"prompt": "a", "model": "gpt-9"})", 404, "gpt-9", "model");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": 100000})", 400, "at most", "max_tokens");
  expect_error("/v1/completions", json{{"prompt", std::string(2000, 'a')}}.dump(), 400, "shorten", "prompt");
  expect_error("/v1/completions", json{{"prompt", std::string(2 << 20, 'a')}}.dump(), 413, "too large");
  expect_error("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", 400, "chat template");
  expect_error("/v1/nothing", "{}", 404, "no route");
  expect_healthy_then_exit_zero(s);
}

TEST(Serve, ChatWithTemplateFileAndApiKey) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  const std::string tpl = testing::TempDir() + "/gptq_serve_chatml.jinja";
  std::ofstream(tpl) << "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}";
  ServerProcess s(m, {"--chat-template", tpl, "--api-key", "sekrit", "--served-model-name", "baby"});
  ASSERT_GT(s.port(), 0) << s.log();
  const json body = {{"model", "baby"}, {"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
                     {"max_tokens", 8}, {"temperature", 0}};
  int status = 0;
  json r = post(s, "/v1/chat/completions", body.dump(), &status);
  EXPECT_EQ(status, 401) << r;
  EXPECT_EQ(r["error"]["code"], "invalid_api_key");
  r = post(s, "/v1/chat/completions", body.dump(), &status, {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(status, 401);
  r = post(s, "/v1/chat/completions", body.dump(), &status, {{"Authorization", "Bearer sekrit"}});
  ASSERT_EQ(status, 200) << r;
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  // The same prompt text through /v1/completions (no BOS: the template writes the specials) gives the same answer.
  const auto gen = run_cli({"generate", "-m", m, "-p", "user: Once upon a time\nassistant:", "--no-special", "-n", "8",
                            "--temperature", "0", "--json", "-t", "1"});
  ASSERT_EQ(gen.rc, 0) << gen.err;
  EXPECT_EQ(r["choices"][0]["message"]["content"], json::parse(gen.out)["text"]);
  auto h = s.client().Get("/health");  // open without the key, as /metrics
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(s.terminate(), 0);
  std::remove(tpl.c_str());
}

// The official `openai` client from the npm registry (node; scripts/setup.sh installs it into
// build/npm, GPTQ_NPM_DIR elsewhere): completions and chat, plain and streamed, the model list and
// two API errors, as tests/node/openai_client.mjs drives them; the texts equal generate's.
TEST(Serve, OfficialOpenAiNodeClient) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  const char* env = std::getenv("GPTQ_NPM_DIR");
  const std::string npm = env && *env ? env : std::string(GPTQ_SOURCE_DIR) + "/build/npm";
  if (std::system("node --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed: skipped";
  if (access((npm + "/node_modules/openai/package.json").c_str(), R_OK) != 0)
    GTEST_SKIP() << "the npm openai client is not in " << npm << " (scripts/setup.sh installs it when npm and its registry are reachable): skipped";
  const std::string script = npm + "/openai_client.mjs";  // next to node_modules, where `import "openai"` resolves
  std::ofstream(script) << slurp(std::string(GPTQ_SOURCE_DIR) + "/tests/node/openai_client.mjs");
  const std::string tpl = testing::TempDir() + "/gptq_serve_node.jinja";
  std::ofstream(tpl) << "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}";
  ServerProcess s(m, {"--chat-template", tpl, "--api-key", "sekrit", "--served-model-name", "baby"});
  ASSERT_GT(s.port(), 0) << s.log();
  const std::string out_file = testing::TempDir() + "/gptq_serve_node.json";
  const std::string cmd = "node " + script + " http://127.0.0.1:" + std::to_string(s.port()) + "/v1 sekrit baby >" +
                          out_file + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(out_file) << s.log();
  const json r = json::parse(slurp(out_file));
  const auto gen = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "12", "--temperature", "0", "--json", "-t", "1"});
  ASSERT_EQ(gen.rc, 0) << gen.err;
  const std::string expected = json::parse(gen.out)["text"];
  EXPECT_EQ(r["completion"]["object"], "text_completion");
  EXPECT_EQ(r["completion"]["text"], expected);
  EXPECT_EQ(r["completion"]["finish_reason"], "length");
  EXPECT_EQ(r["completion"]["usage"]["completion_tokens"], 12);
  EXPECT_EQ(r["completion_stream"]["text"], expected);
  EXPECT_EQ(r["completion_stream"]["finish_reason"], "length");
  EXPECT_EQ(r["completion_stream"]["usage"]["completion_tokens"], 12);
  const auto chat = run_cli({"generate", "-m", m, "-p", "user: Once upon a time\nassistant:", "--no-special", "-n", "8",
                             "--temperature", "0", "--json", "-t", "1"});
  ASSERT_EQ(chat.rc, 0) << chat.err;
  const std::string answer = json::parse(chat.out)["text"];
  EXPECT_EQ(r["chat"]["object"], "chat.completion");
  EXPECT_EQ(r["chat"]["role"], "assistant");
  EXPECT_EQ(r["chat"]["content"], answer);
  EXPECT_EQ(r["chat_stream"]["content"], answer);
  EXPECT_EQ(r["chat_stream"]["usage"]["completion_tokens"], 8);
  EXPECT_EQ(r["models"], json::array({"baby"}));
  EXPECT_EQ(r["error"]["status"], 400) << r;
  EXPECT_EQ(r["error"]["is_api_error"], true);
  EXPECT_EQ(r["auth_error"]["status"], 401) << r;
  EXPECT_EQ(r["auth_error"]["is_auth_error"], true);
  EXPECT_EQ(s.terminate(), 0) << s.log();
  std::remove(tpl.c_str());
}

// One running request (the batch holds one), one queued (the queue holds one): the next gets 429.
// Then the running one's client disconnects: its blocks come back and the queued one runs.
TEST(Serve, FullQueueIs429AndADisconnectFreesTheSlot) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  ServerProcess s(m, {"--max-batch", "1", "--max-queue", "1"});
  ASSERT_GT(s.port(), 0) << s.log();
  json long_body = completion("Once upon a time", 1000);
  long_body["stream"] = true;
  std::atomic<int> queued_status{0};
  int full_status = 0;
  std::thread queued;
  Streamed first = stream(s, "/v1/completions", long_body, 3, [&] {
    queued = std::thread([&] {
      int st = 0;
      post(s, "/v1/completions", completion("The sea", 8).dump(), &st);
      queued_status = st;
    });
    for (int i = 0; i < 400 && metrics(s)["gptq_queue_depth"] < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    json r = post(s, "/v1/completions", completion("The sky", 8).dump(), &full_status);
    EXPECT_EQ(r["error"]["type"], "rate_limit_error") << r;
  });
  EXPECT_FALSE(first.done);
  EXPECT_EQ(full_status, 429);
  queued.join();
  EXPECT_EQ(queued_status, 200);
  std::map<std::string, double> mt;
  for (int i = 0; i < 500; ++i) {
    mt = metrics(s);
    if (mt["gptq_kv_blocks_used"] == 0 && mt["gptq_running_sequences"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(mt["gptq_kv_blocks_used"], 0);
  EXPECT_EQ(mt["gptq_running_sequences"], 0);
  // The disconnected stream was cut short: far fewer than its 1000 tokens were generated.
  EXPECT_LT(mt["gptq_generation_tokens_total"], 500);
  EXPECT_EQ(mt["gptq_requests_total{endpoint=\"/v1/completions\",status=\"429\"}"], 1);
  // Histograms: cumulative buckets ending in +Inf = _count.
  EXPECT_EQ(mt["gptq_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], mt["gptq_time_to_first_token_seconds_count"]);
  EXPECT_GE(mt["gptq_time_to_first_token_seconds_count"], 2);
  EXPECT_LE(mt["gptq_inter_token_latency_seconds_bucket{le=\"0.001\"}"], mt["gptq_inter_token_latency_seconds_bucket{le=\"1\"}"]);
  expect_healthy_then_exit_zero(s);
}

TEST(Serve, SigtermDrainsRunningStreamsAndExitsZero) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  ServerProcess s(m, {});
  ASSERT_GT(s.port(), 0) << s.log();
  json body = completion("Once upon a time", 200);
  body["stream"] = true;
  const Streamed st = stream(s, "/v1/completions", body, 0, [&] { s.signal_term(); });
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.finish_reason, "length");
  EXPECT_EQ(s.wait(), 0) << s.log();
  EXPECT_NE(s.log().find("finishing the requests in progress"), std::string::npos) << s.log();
}

}  // namespace

namespace {

// While SIGTERM drains a running stream, the listening socket still answers: new requests get 503
// with an OpenAI error object (not a refused connection), /health says 503, and the stream finishes.
TEST(Serve, DuringTheDrainNewRequestsGet503AndStreamsFinish) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  ServerProcess s(m, {});
  ASSERT_GT(s.port(), 0) << s.log();
  json body = completion("Once upon a time", 600);
  body["stream"] = true;
  int health = 0, refused = 0;
  json error;
  const Streamed st = stream(s, "/v1/completions", body, 0, [&] {
    s.signal_term();
    for (int i = 0; i < 500 && health != 503; ++i) {
      auto h = s.client().Get("/health");
      health = h ? h->status : -1;
      if (health != 503) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    error = post(s, "/v1/completions", completion("The sea", 4).dump(), &refused);
  });
  EXPECT_EQ(health, 503);
  EXPECT_EQ(refused, 503) << error;
  EXPECT_EQ(error["error"]["type"], "server_error") << error;
  EXPECT_NE(error["error"]["message"].get<std::string>().find("shutting down"), std::string::npos) << error;
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.finish_reason, "length");
  EXPECT_EQ(s.wait(), 0) << s.log();
}

// A raw TCP client: sends one request and lets the test close the connection when it likes.
class RawClient {
 public:
  RawClient(int port, const std::string& path, const std::string& body) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    sent_ = send(fd_, req.data(), req.size(), 0) == ssize_t(req.size());
  }
  ~RawClient() { close(); }
  bool sent() const { return sent_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool sent_ = false;
};

// Non-streaming clients that disconnect before their answer: a queued one leaves the queue, a
// running one leaves the batch at once and its KV blocks come back; the next request (the batch
// holds one) is answered.
TEST(Serve, NonStreamingClientsThatLeaveFreeTheirSlots) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  ServerProcess s(m, {"--max-batch", "1"});
  ASSERT_GT(s.port(), 0) << s.log();
  const std::string left = "gptq_requests_total{endpoint=\"/v1/completions\",status=\"499\"}";
  // Polls /metrics until pred holds (10 s at most); the last sample.
  auto until = [&](const std::function<bool(std::map<std::string, double>&)>& pred) {
    std::map<std::string, double> mt;
    for (int i = 0; i < 1000; ++i) {
      mt = metrics(s);
      if (pred(mt)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return mt;
  };
  {
    RawClient running(s.port(), "/v1/completions", completion("Once upon a time", 1000).dump());
    ASSERT_TRUE(running.sent());
    auto mt = until([](auto& m) { return m["gptq_kv_blocks_used"] > 0; });
    ASSERT_GT(mt["gptq_kv_blocks_used"], 0);
    {
      RawClient queued(s.port(), "/v1/completions", completion("The sea", 8).dump());
      ASSERT_TRUE(queued.sent());
      mt = until([](auto& m) { return m["gptq_queue_depth"] == 1; });
      ASSERT_EQ(mt["gptq_queue_depth"], 1);
    }  // the queued client closes its connection
    mt = until([&](auto& m) { return m["gptq_queue_depth"] == 0 && m[left] == 1; });
    EXPECT_EQ(mt["gptq_queue_depth"], 0);
    EXPECT_EQ(mt[left], 1);
    EXPECT_EQ(mt["gptq_running_sequences"], 1);  // the running one goes on
  }  // the running client closes its connection
  auto mt = until([&](auto& m) { return m["gptq_kv_blocks_used"] == 0 && m["gptq_running_sequences"] == 0 && m[left] == 2; });
  EXPECT_EQ(mt["gptq_kv_blocks_used"], 0);
  EXPECT_EQ(mt["gptq_running_sequences"], 0);
  EXPECT_EQ(mt[left], 2);
  EXPECT_LT(mt["gptq_generation_tokens_total"], 500);  // cut short, far from its 1000 tokens
  int status = 0;
  json r = post(s, "/v1/completions", completion("The sea", 4).dump(), &status);
  EXPECT_EQ(status, 200) << r;
  expect_healthy_then_exit_zero(s);
}

// The load test: 64 concurrent greedy streams of 64 tokens each, with malformed requests, slow
// readers, clients that stop reading mid-stream and ones that never finish sending mixed in. Every
// completed stream equals the same request run alone; afterwards the server is healthy, holds no
// KV blocks or sequences, and its resident memory is where it was after a first identical round
// (no leak: the KV pool and the recorded workspaces are grown by then).
// Under AddressSanitizer (scripts/test.sh --sanitize builds the server and the tests with it) freed
// memory sits in ASan's quarantine, so resident memory says nothing; LeakSanitizer checks the server
// at its exit instead (a leak makes the exit status nonzero).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

long rss_kib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

TEST(Serve, LoadTestSixtyFourStreamsWithMisbehavingClients) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  ServerProcess s(m, {"--max-batch", "64", "--max-queue", "256", "-c", "256"});
  ASSERT_GT(s.port(), 0) << s.log();
  constexpr int kStreams = 64, kTokens = 64;
  std::vector<std::string> prompts, alone(kStreams);
  for (int i = 0; i < kStreams; ++i)
    prompts.push_back(std::string("Once upon a time ") + std::string(size_t(1 + i % 7), "the sea was calm"[i % 16]) +
                      " number " + std::to_string(i));
  for (int i = 0; i < kStreams; ++i) {
    int status = 0;
    json r = post(s, "/v1/completions", completion(prompts[size_t(i)], kTokens).dump(), &status);
    ASSERT_EQ(status, 200) << r;
    alone[size_t(i)] = r["choices"][0]["text"];
  }
  auto round = [&](int r) {
    std::vector<Streamed> together(kStreams);
    std::atomic<int> bad_ok{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < kStreams; ++i)
      clients.emplace_back([&, i] {
        json body = completion(prompts[size_t(i)], kTokens);
        body["stream"] = true;
        together[size_t(i)] = stream(s, "/v1/completions", body, 0, i % 16 == 0 ? std::function<void()>([] {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a slow reader: stalls on its first chunk
        }) : std::function<void()>());
      });
    for (int i = 0; i < 8; ++i)  // malformed: each a 400
      clients.emplace_back([&, i] {
        int status = 0;
        post(s, "/v1/completions", i % 2 ? "{\"prompt\": " : R"({"prompt": "a", "max_tokens": "many"})", &status);
        if (status == 400) ++bad_ok;
      });
    for (int i = 0; i < 4; ++i)  // stop reading after 3 chunks and disconnect
      clients.emplace_back([&, i] {
        json body = completion(prompts[size_t(i)], 200);
        body["stream"] = true;
        stream(s, "/v1/completions", body, 3);
      });
    for (int i = 0; i < 4; ++i)  // announce a body, send part of it, go away
      clients.emplace_back([&] {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(uint16_t(s.port()));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 400\r\n\r\n{\"prompt\": \"Once";
          (void)!send(fd, req.data(), req.size(), 0);
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
        ::close(fd);
      });
    for (auto& t : clients) t.join();
    for (int i = 0; i < kStreams; ++i) {
      EXPECT_TRUE(together[size_t(i)].done) << "round " << r << " stream " << i << ": status "
                                            << together[size_t(i)].status << " " << together[size_t(i)].error;
      EXPECT_EQ(together[size_t(i)].text, alone[size_t(i)]) << "round " << r << " stream " << i;
    }
    EXPECT_EQ(bad_ok, 8);
  };
  // Settled: no sequence running, no KV block held (the disconnected ones freed theirs).
  auto settled = [&] {
    std::map<std::string, double> mt;
    for (int i = 0; i < 500; ++i) {
      mt = metrics(s);
      if (mt["gptq_kv_blocks_used"] == 0 && mt["gptq_running_sequences"] == 0 && mt["gptq_queue_depth"] == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(mt["gptq_kv_blocks_used"], 0);
    EXPECT_EQ(mt["gptq_running_sequences"], 0);
    EXPECT_EQ(mt["gptq_queue_depth"], 0);
  };
  round(1);
  settled();
  const long base = rss_kib(s.pid());
  round(2);
  settled();
  const long after = rss_kib(s.pid());
  EXPECT_GT(base, 0);
  if (!kAsan) EXPECT_LE(after, base + 16 * 1024) << "resident memory grew from " << base << " KiB to " << after << " KiB";
  expect_healthy_then_exit_zero(s);
}

}  // namespace
