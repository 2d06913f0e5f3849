#!/usr/bin/env python3
"""Renders chat templates with Python's Jinja2 exactly as transformers' apply_chat_template does
(trim_blocks, lstrip_blocks, loop controls, sandboxed, raise_exception, json.dumps tojson): the
reference for tests/test_chat_template.cpp.

  render_chat_template.py < cases.json        one JSON list of results on stdout
  render_chat_template.py --goldens DIR       (re)writes DIR/golden/* from DIR/cases.json

A case is {"template": source or "file": NAME.jinja, "bos_token", "eos_token", "messages",
"add_generation_prompt"}; its result is {"output": text} or {"error": message}.
"""
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTracker(jinja2.ext.Extension):
    """transformers' {% generation %} block, which renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                    extensions=[GenerationTracker, jinja2.ext.loopcontrols])
ENV.filters["tojson"] = tojson
ENV.globals["raise_exception"] = raise_exception


def render(case, base_dir):
    source = case.get("template")
    if source is None:
        with open(os.path.join(base_dir, case["file"]), encoding="utf-8", newline="") as f:
            source = f.read()
    try:
        out = ENV.from_string(source).render(
            messages=case["messages"], add_generation_prompt=case.get("add_generation_prompt", False),
            bos_token=case.get("bos_token", ""), eos_token=case.get("eos_token", ""))
        return {"output": out}
    except Exception as e:  # noqa: BLE001 - every failure is a result to compare
        return {"error": str(e)}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--goldens":
        base = sys.argv[2]
        with open(os.path.join(base, "cases.json"), encoding="utf-8") as f:
            cases = json.load(f)
        os.makedirs(os.path.join(base, "golden"), exist_ok=True)
        for case in cases:
            result = render(case, base)
            name = os.path.join(base, "golden", case["name"])
            ext, text = (".txt", result["output"]) if "output" in result else (".error", result["error"])
            with open(name + ext, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return
    cases = json.load(sys.stdin)
    base = sys.argv[1] if len(sys.argv) > 1 else "."
    json.dump([render(c, base) for c in cases], sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
