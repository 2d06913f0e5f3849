// Chat templates against Python's Jinja2: golden outputs made by scripts/render_chat_template.py
// (tests/data/chat_templates/golden), the same cases rendered live when python3 with jinja2 is
// installed, errors, limits on hostile templates, and reading a model folder's template.
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "chat/chat_template.h"
#include "core/fs.h"
#include "core/json.h"
#include "gptq/error.h"
#include "shared_paths.h"
#include "temp_dir_test.h"

namespace {

using gptq::chat::ChatTemplate;
using gptq::chat::Message;

const std::string kDataDir = std::string(GPTQ_SOURCE_DIR) + "/tests/data/chat_templates";

struct Case {
  std::string name, file, bos, eos;
  std::vector<Message> messages;
  bool add_generation_prompt;
};

std::vector<Case> load_cases() {
  std::vector<Case> cases;
  for (const auto& c : gptq::read_json_file(kDataDir + "/cases.json")) {
    Case k{c["name"], c["file"], c["bos_token"], c["eos_token"], {}, c["add_generation_prompt"]};
    for (const auto& m : c["messages"]) k.messages.push_back({m["role"], m["content"]});
    cases.push_back(std::move(k));
  }
  return cases;
}

// {"output": text} or {"error": message}, as the Python script reports a case.
nlohmann::json render_case(const Case& c) {
  try {
    const ChatTemplate t(gptq::read_text_file(kDataDir + "/" + c.file), c.bos, c.eos);
    return {{"output", t.render(c.messages, c.add_generation_prompt)}};
  } catch (const gptq::Error& e) {
    return {{"error", e.what()}};
  }
}

// Our result against Jinja2's: the same text, or an error whose message contains Jinja2's.
void expect_same(const Case& c, const nlohmann::json& ours, const nlohmann::json& jinja2) {
  if (jinja2.contains("output")) {
    ASSERT_TRUE(ours.contains("output")) << c.name << ": Jinja2 renders it, we fail: " << ours["error"];
    EXPECT_EQ(ours["output"].get<std::string>(), jinja2["output"].get<std::string>()) << c.name;
  } else {
    ASSERT_TRUE(ours.contains("error")) << c.name << ": Jinja2 fails (" << jinja2["error"] << "), we render";
    EXPECT_NE(ours["error"].get<std::string>().find(jinja2["error"].get<std::string>()), std::string::npos)
        << c.name << ": " << ours["error"] << " vs Jinja2's " << jinja2["error"];
  }
}

TEST(ChatTemplate, MatchesGoldenOutputs) {
  const auto cases = load_cases();
  ASSERT_GE(cases.size(), 60u);
  for (const Case& c : cases) {
    const std::string base = kDataDir + "/golden/" + c.name;
    const nlohmann::json golden = gptq::file_exists(base + ".txt")
                                      ? nlohmann::json{{"output", gptq::read_text_file(base + ".txt")}}
                                      : nlohmann::json{{"error", gptq::read_text_file(base + ".error")}};
    expect_same(c, render_case(c), golden);
  }
}

bool python_has_jinja2() { return std::system("python3 -c 'import jinja2' >/dev/null 2>&1") == 0; }

// Runs scripts/render_chat_template.py on `cases` (its JSON input) and returns its results.
nlohmann::json render_with_jinja2(const nlohmann::ordered_json& cases, const std::string& dir) {
  const std::string in = dir + "/cases.json";
  std::ofstream(in) << cases.dump();
  const std::string cmd =
      "python3 " + std::string(GPTQ_SOURCE_DIR) + "/scripts/render_chat_template.py " + kDataDir + " < " + in;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return nullptr;
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  if (pclose(p) != 0) return nullptr;
  return nlohmann::json::parse(out);
}

class ChatTemplateLive : public gptq_test::TempDirTest {};

TEST_F(ChatTemplateLive, MatchesPythonJinja2) {
  if (!python_has_jinja2()) GTEST_SKIP() << "python3 with jinja2 is not installed (apt-get install python3-jinja2)";
  // The checked-in cases plus every template on extra conversations.
  std::vector<Case> cases = load_cases();
  const std::vector<std::vector<Message>> extra = {
      {},
      {{"user", ""}},
      {{"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"user", "u2"}, {"assistant", "a2"}, {"user", "u3"}},
      {{"tool", "{\"x\": 1}"}},
      {{"user", "{{ '}}' }} {%- raw %} \\ \" ' \n\r\n end"}, {"assistant", "  padded  "}},
  };
  const size_t n = cases.size();
  for (size_t i = 0; i < n; i += 6) {
    for (size_t k = 0; k < extra.size(); ++k) {
      for (bool gen : {false, true}) {
        Case c = cases[i];
        c.name += "_extra" + std::to_string(k) + (gen ? "_gen" : "");
        c.messages = extra[k];
        c.add_generation_prompt = gen;
        cases.push_back(std::move(c));
      }
    }
  }
  // Ordered: the messages' keys reach Python as ChatTemplate passes them (role, content), which tojson shows.
  nlohmann::ordered_json input = nlohmann::ordered_json::array();
  for (const Case& c : cases) {
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const Message& m : c.messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    input.push_back({{"file", c.file},
                     {"bos_token", c.bos},
                     {"eos_token", c.eos},
                     {"messages", msgs},
                     {"add_generation_prompt", c.add_generation_prompt}});
  }
  const nlohmann::json expected = render_with_jinja2(input, dir_.string());
  ASSERT_TRUE(expected.is_array() && expected.size() == cases.size()) << "scripts/render_chat_template.py failed";
  for (size_t i = 0; i < cases.size(); ++i) expect_same(cases[i], render_case(cases[i]), expected[i]);
}

// Small templates on the edges of Jinja2's semantics, each compared with Jinja2 on one conversation.
TEST_F(ChatTemplateLive, EdgeCasesMatchPythonJinja2) {
  if (!python_has_jinja2()) GTEST_SKIP() << "python3 with jinja2 is not installed (apt-get install python3-jinja2)";
  const std::vector<std::string> templates = {
      "a  \n  {% if true %}\n  b\n  {% endif %}  \n c",
      "a  {%- if true -%}  b  {%- endif -%}  c",
      "{% for m in messages %}\n    {{ m.role }}\n{% endfor %}\n",
      "x\r\ny\r{% if true %}\r\nz{% endif %}\n\n",
      "  {#- c -#}  a  {# c #}\n  b {%+ if true %} c{% endif +%}\nd",
      "{{ 'a' }}\n{{ 'b' -}}\n\n{{- 'c' }}\n",
      "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}",
      "{% for i in range(5) %}{% if i is even %}{% continue %}{% endif %}{{ i }}{% if i > 2 %}{% break %}{% endif %}{% "
      "endfor %}",
      "{{ messages|length }} {{ messages[0]['content']|trim|length }} {{ messages|map(attribute='role')|join(', ') }}",
      "{{ [1, [2, 'x'], {'k': none}] }} {{ ('a',) }} {{ 1.0 }} {{ 1e100 }} {{ -0.0 }} {{ 2.5e-7 }} {{ 10/4 }} {{ "
      "123456789012345678 }}",
      "{{ 'a\\tb\\\\c\\'d\\\"e\\u00e9\\x7f' }} {{ ['\\n', '\\x00', \"'\", '\"', '\\u00a0', '\\u3000'] }}",
      "{{ {'a': 'b'}|tojson }} {{ 'ü\\n\"'|tojson }} {{ messages|tojson(indent=1) }} {{ 1.5|tojson }}",
      "{{ 'Hello World'.split() }} {{ ' a  b '.split(' ') }} {{ 'a-b-c'.split('-', 1) }} {{ '  x  '.rstrip() }}|",
      "{{ 'ab' < 'b' }} {{ [1, 2] == [1, 2] }} {{ none == false }} {{ 0 == false }} {{ 'x' if none else 'y' }} {{ 1 "
      "and 'z' }} {{ 0 or '' }}|",
      "{{ x|default('dx') }} {{ none|default('dn') }} {{ none|default('dn', true) }} {{ x is not defined }} {{ "
      "messages[5] is defined }}",
      "{{ 'x'|upper ~ 'Y'|lower }} {{ 'ßüÉ'|upper }} {{ 'ÀÉÎ'|lower }} {{ 'élan vital'|title }} {{ \"they're\".title() "
      "}}",
      "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ [3, 1, 2][::-1] }} {{ 'abc'[-1:] "
      "}} {{ [1,2,3][5:] }}",
      "{% macro m(a, b=2) %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, 3) }}{{ m(b=4, a=5) }}",
      "{% set ns = namespace(items=[]) %}{% for i in range(3) %}{% set ns.items = ns.items + [i * 2] %}{% endfor %}{{ "
      "ns.items }}",
      "{% for k, v in {'b': 1, 'a': 2}|items %}{{ k }}{{ v }}{% endfor %} {{ {'x': 1}.values()|list }}",
      "{{ messages|selectattr('role', 'in', ['user', 'system'])|map(attribute='content')|map('length')|list }}",
      "{%- for m in messages if m.role != 'system' -%}{{ loop.index }}{{ m.role[0] }}{{ loop.length }}{%- endfor -%}",
      "{{ raise_exception('custom: ' ~ messages[0].role) }}",
      "{{ messages[0].role.upper() }} {{ messages.0.role }} {{ 'abc'.replace('', '-') }} {{ 'aXbX'.count('X') }} {{ "
      "'abc'.find('c') }}",
      "{{ 7 % -3 }} {{ -7.5 // 2 }} {{ 2 ** -1 }} {{ 3 * 1.5 }} {{ true + true }} {{ '5'|int * 2 }} {{ '2.7'|float }} "
      "{{ 'z'|float }}",
      "{% if messages[0].content is string and messages is not string %}ok{% endif %} {{ 3 is number }} {{ true is "
      "number }} {{ 1 is integer }}",
      "{% set a, b = 1, 2 %}{{ a }}{{ b }} {{ (1, 2)|list }} {% set t %}  captured {{ a }}  {% endset %}[{{ t }}]",
      "{% generation %}gen {{ messages|length }}{% endgeneration %}",
      "{{ 'x' ~ 5 ~ 1.5 ~ [1] ~ {'a': 1} ~ none }} {{ '%' }} {{ '{' ~ '}' }}",
      "{% if true %}\n\n  x\n{% endif %}\n  {% if false %}no{% else %}\n  else\n  {% endif %}\n",
      "\t {% for i in [1] %}\t{{ i }}\n\t {%- endfor %}\n \t{# c #}\n{%- if true %} t {% endif -%}\n  end",
      "{{ messages[0]['content'] }}{{- ' ' -}}{{ messages[1]['content'] }}   {%- if true %}  {%+ endif %}   x",
      "{{ {'a': {'b': {'c': '}} %}'}}}['a']['b']['c'] }} {{ [[1]][0][0] }} {{ 'q' if [] else 'r' }}",
      "{{ 'a' 'b' \"c\" }} {{ 1_000 + 0 }} {{ 0.5 if false else 1.5e3 }}",
      "{{ messages|first|tojson }} {{ (messages|last).content }} {{ messages[-2:]|map(attribute='role')|list }}",
      "{{ 'abc'|reverse }} {{ 'a b'|replace(' ', '_') }} {{ ['x', 1, none]|join('|') }} {{ 'hi'|center(6) if false "
      "else 'c' }}",
      "{{ 'tab\\there' }}{{ '\\\\n stays' }}{{ 'line1\\\nline2' }}",
      "{% for x in 'héé' %}[{{ x }}{{ loop.revindex0 }}]{% endfor %}{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}",
      "{{ not none }} {{ not 'a' in 'abc' }} {{ -2 ** 2 }} {{ (-2) ** 2 }} {{ 2 ** 3 ** 2 }} {{ 1 + 2 ~ 3 }} {{ 10 - 3 "
      "- 2 }}",
      "{{ messages[0].content.strip()|length }} {{ '  '.join(['a', 'b']) }} {{ ', "
      "'.join(messages|map(attribute='role')) }}",
      "{{ 5 is divisibleby(5) }} {{ 5 is odd }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ messages is sequence }} "
      "{{ 1 is in [1] }} {{ 2 is gt 1 }}",
      "{% for m in messages %}{% set outer = loop %}{% for c in 'ab' %}{{ outer.index }}{{ loop.index }}{% endfor %}{% "
      "endfor %}",
      "{% for i in range(3) %}{% else %}never{% endfor %}{% for i in [] if i %}x{% else %}empty{% endfor %}",
      "{{ messages[0]|items|list }} {{ messages[0]|length }} {{ messages[0]|list }} {{ none|string }} {{ "
      "true|string|upper }}",
  };
  std::vector<Case> cases;
  nlohmann::ordered_json input = nlohmann::ordered_json::array();
  const std::vector<Message> messages = {{"system", "  sys  "}, {"user", "hello"}, {"assistant", "hi"}};
  for (size_t i = 0; i < templates.size(); ++i) {
    cases.push_back({"edge" + std::to_string(i), "", "<s>", "</s>", messages, true});
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const Message& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    input.push_back({{"template", templates[i]},
                     {"bos_token", "<s>"},
                     {"eos_token", "</s>"},
                     {"messages", msgs},
                     {"add_generation_prompt", true}});
  }
  const nlohmann::json expected = render_with_jinja2(input, dir_.string());
  ASSERT_TRUE(expected.is_array() && expected.size() == cases.size()) << "scripts/render_chat_template.py failed";
  for (size_t i = 0; i < cases.size(); ++i) {
    nlohmann::json ours;
    try {
      ours = {{"output", ChatTemplate(templates[i], "<s>", "</s>").render(messages, true)}};
    } catch (const gptq::Error& e) {
      ours = {{"error", e.what()}};
    }
    expect_same(cases[i], ours, expected[i]);
  }
}

std::string render(const std::string& source, const std::vector<Message>& messages = {{"user", "hi"}}) {
  return ChatTemplate(source, "<s>", "</s>").render(messages, true);
}

// The gptq::Error message of rendering (or parsing) `source`; "" when it succeeds.
std::string error_of(const std::string& source) {
  try {
    render(source);
  } catch (const gptq::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("a\nb {% if x %}"),
            "chat template syntax error at line 2: unexpected end of template: 'if' at line 2 is never closed "
            "(expected 'endif')");
  EXPECT_NE(error_of("\n\n{{ 1 + }}").find("syntax error at line 3: expected an expression"), std::string::npos);
  EXPECT_NE(error_of("{% endfor %}").find("unknown or unexpected tag 'endfor'"), std::string::npos);
  EXPECT_NE(error_of("{% foo %}").find("unknown or unexpected tag 'foo'"), std::string::npos);
  EXPECT_NE(error_of("{{ 'abc }}").find("unterminated string literal"), std::string::npos);
  EXPECT_NE(error_of("{{ (1 }}").find("syntax error"), std::string::npos);
  EXPECT_NE(error_of("{# open").find("unclosed comment"), std::string::npos);
  EXPECT_NE(error_of("{% break %}").find("'break' outside of a loop"), std::string::npos);
  EXPECT_NE(error_of("{{ x ? y }}").find("unexpected character '?'"), std::string::npos);
}

TEST(ChatTemplate, EvaluationErrorsAreOneLine) {
  EXPECT_EQ(error_of("line1\n{{ raise_exception('Bad\nroles') }}"),
            "chat template raised an exception at line 2: Bad roles");
  EXPECT_EQ(error_of("{{ x|frobnicate }}"), "chat template error at line 1: no filter named 'frobnicate'");
  EXPECT_EQ(error_of("{{ x is frobnicated }}"), "chat template error at line 1: no test named 'frobnicated'");
  EXPECT_EQ(error_of("\n{{ x.y }}"), "chat template error at line 2: 'x' is undefined");
  EXPECT_EQ(error_of("{{ messages[0].nope.deeper }}"),
            "chat template error at line 1: 'dict object' has no attribute 'nope'");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "chat template error at line 1: integer division or modulo by zero");
  EXPECT_EQ(error_of("{{ 1 + 'a' }}"),
            "chat template error at line 1: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_EQ(error_of("{{ x + 1 }}"), "chat template error at line 1: 'x' is undefined");
  // Undefined renders empty and is falsy, as Jinja2's default Undefined.
  EXPECT_EQ(render("[{{ x }}{{ x|length }}{% if x %}t{% endif %}{{ x is defined }}{% for i in x %}i{% endfor %}]"),
            "[0False]");
}

TEST(ChatTemplate, HostileTemplatesHitLimits) {
  EXPECT_NE(error_of("{% for i in range(100000000) %}x{% endfor %}").find("over the limit"), std::string::npos);
  EXPECT_NE(error_of("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(10) %}{% endfor %}"
                     "{% endfor %}{% endfor %}")
                .find("loops over the limit of 1000000 iterations"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                     "{% endfor %}")
                .find("a string over the limit"),
            std::string::npos);
  EXPECT_NE(error_of("{% for i in range(1000000) %}{{ 'x' * 100 }}{% endfor %}").find("output over the limit"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("over the limit"), std::string::npos);
  EXPECT_NE(error_of("{{ [1] * 100000000000 }}").find("over the limit"), std::string::npos);
  EXPECT_NE(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nested deeper than"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").find("nested deeper than"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(100000, '-') + "1 }}").find("nested deeper than"), std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  EXPECT_NE(error_of(chain + " }}").find("nested deeper than"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 10000; ++i) ifs += "{% if true %}";
  EXPECT_NE(error_of(ifs).find("nested deeper than"), std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}")
                .find("nested deeper than 256"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(n=none) %}{% for i in range(100000) %}{% set ns.n = namespace(n=ns.n) %}"
                     "{% endfor %}")
                .find("nested deeper than 256"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns }}").find("holding itself"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 9223372036854775807 + 1 }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ 2 ** 100 }}").find("integer overflow"), std::string::npos);
}

TEST(ChatTemplate, CopiesShareTheParsedTemplate) {
  ChatTemplate a("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", "<s>", "</s>");
  const ChatTemplate b = a;
  ChatTemplate c = std::move(a);
  EXPECT_EQ(b.render({{"user", "x"}}, false), "<s>x</s>");
  EXPECT_EQ(c.render({{"user", "y"}}, false), "<s>y</s>");
}

TEST(ChatTemplate, ModelDirWithoutTemplateIsNullopt) {
  const std::string dir = shared_path("models/llama-gutenberg-22m");
  if (dir.empty() || !gptq::dir_exists(dir)) GTEST_SKIP() << "shared models absent (../shared/models)";
  EXPECT_FALSE(ChatTemplate::from_model_dir(dir).has_value());
}

class ChatTemplateDir : public gptq_test::TempDirTest {};

TEST_F(ChatTemplateDir, ReadsStringAndListForms) {
  EXPECT_FALSE(ChatTemplate::from_model_dir(dir_.string()).has_value());  // no tokenizer_config.json
  write("tokenizer_config.json",
        R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",)"
        R"( "chat_template": [{"name": "tool_use", "template": "TOOLS"},)"
        R"( {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"}]})");
  auto t = ChatTemplate::from_model_dir(dir_.string());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render({{"user", "hi"}}, false), "<s>hi</s>");

  write("tokenizer_config.json", R"({"eos_token": null, "chat_template": "[{{ messages|length }}{{ eos_token }}]"})");
  t = ChatTemplate::from_model_dir(dir_.string());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render({{"user", "a"}, {"assistant", "b"}}, true), "[2]");

  write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_FALSE(ChatTemplate::from_model_dir(dir_.string()).has_value());

  write("tokenizer_config.json", R"({"chat_template": 3})");
  EXPECT_THROW(ChatTemplate::from_model_dir(dir_.string()), gptq::Error);
  write("tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  EXPECT_THROW(ChatTemplate::from_model_dir(dir_.string()), gptq::Error);
  write("tokenizer_config.json", "{not json");
  EXPECT_THROW(ChatTemplate::from_model_dir(dir_.string()), gptq::Error);
}

}  // namespace
