#!/usr/bin/env python3
"""Load generator for gptq serve: N concurrent streaming /v1/completions clients (python3 stdlib).

Each client sends --requests streamed completions one after another (temperature 0, --max-tokens
tokens, the eos ignored only in the sense that prompts rarely end early). Prints total generated
tokens/s over the wall time, and time to first token and inter-token latency p50/p99 as the
clients saw them (one sample per SSE chunk).

  scripts/serve_load.py --port 8080 --concurrency 1,8,32,64 --max-tokens 64 --requests 2

--long-prompt N instead: what a long prompt arriving does to a running stream. One stream of
--max-tokens tokens runs; after its 16th token a request with an N-token prompt (token ids, max_tokens
1) arrives. Prints the stream's inter-token gaps before the long prompt (p50) and while it is
prefilled (from its send to its answer: max and count), and the long prompt's time to its answer.
With the server's --prefill-chunk C, a gap should stay near one step with C prompt tokens in it.

  scripts/serve_load.py --port 8080 --long-prompt 4000 --max-tokens 512
"""
import argparse
import http.client
import json
import threading
import time


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, prompt, max_tokens, ttft, itl):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    last, tokens = None, 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if not chunk["choices"] or chunk["choices"][0].get("finish_reason"):
            continue
        now = time.perf_counter()
        if last is None:
            ttft.append(now - t0)
        else:
            itl.append(now - last)
        last = now
    conn.close()
    return tokens


def run(host, port, concurrency, max_tokens, requests):
    ttft, itl, totals, errors = [], [], [0] * concurrency, []

    def client(i):
        try:
            for r in range(requests):
                totals[i] += one_request(host, port, f"Chapter {i * requests + r}. It was a", max_tokens, ttft, itl)
        except Exception as e:  # reported, not fatal: the table says how many failed
            errors.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(totals), wall, ttft, itl, errors


def long_prompt(host, port, n_prompt, max_tokens):
    """The stream's token arrival times and the long request's [send, answer] window."""
    arrivals, window, errors = [], [], []
    started = threading.Event()

    def stream():
        try:
            conn = http.client.HTTPConnection(host, port, timeout=600)
            body = json.dumps({"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0,
                               "stream": True})
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            for line in resp:
                line = line.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    arrivals.append(time.perf_counter())
                    if len(arrivals) == 16:
                        started.set()
            conn.close()
        except Exception as e:
            errors.append(str(e))
        started.set()

    t = threading.Thread(target=stream)
    t.start()
    started.wait()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    body = json.dumps({"prompt": [100 + i % 1000 for i in range(n_prompt)], "max_tokens": 1, "temperature": 0})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    t1 = time.perf_counter()
    conn.close()
    t.join()
    if resp.status != 200:
        errors.append(f"HTTP {resp.status}: {answer}")
    return arrivals, (t0, t1), answer.get("usage", {}).get("prompt_tokens"), errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--long-prompt", type=int, default=0, help="the long-prompt measurement with this many tokens")
    a = ap.parse_args()
    if a.long_prompt:
        arrivals, (t0, t1), n, errors = long_prompt(a.host, a.port, a.long_prompt, a.max_tokens)
        gaps = [(b, b - p) for p, b in zip(arrivals, arrivals[1:])]
        before = [g for at, g in gaps if at < t0]
        during = [g for at, g in gaps if at >= t0 and at - g <= t1]  # gaps overlapping the prefill window
        print("| prompt tokens | answer ms | stream gap p50 before ms | stream gaps during | max gap during ms | errors |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {n} | {(t1 - t0) * 1e3:.1f} | {percentile(before, 50) * 1e3:.1f} | {len(during)} | "
              f"{max(during, default=float('nan')) * 1e3:.1f} | {len(errors)} |", flush=True)
        return
    print("| streams | requests | tokens | wall s | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in (int(x) for x in a.concurrency.split(",")):
        tokens, wall, ttft, itl, errors = run(a.host, a.port, c, a.max_tokens, a.requests)
        print(f"| {c} | {c * a.requests} | {tokens} | {wall:.2f} | {tokens / wall:.1f} | "
              f"{percentile(ttft, 50) * 1e3:.1f} | {percentile(ttft, 99) * 1e3:.1f} | "
              f"{percentile(itl, 50) * 1e3:.1f} | {percentile(itl, 99) * 1e3:.1f} | {len(errors)} |", flush=True)


if __name__ == "__main__":
    main()
