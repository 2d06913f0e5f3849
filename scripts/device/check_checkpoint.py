#!/usr/bin/env python3
"""Independent check of a GPTQ checkpoint written by `gptq quantize`, with PyTorch + transformers.

Reads the checkpoint's tensors with safetensors, dequantizes every GPTQ layer in torch following
the AutoGPTQ/GPTQModel format (qweight packed along K, qzeros along N, one little-endian bit
stream per column; v1 zeros stored minus one; W = scales[g_idx] * (q - zeros[g_idx])), puts the
weights into transformers' LlamaForCausalLM (fp32) and measures perplexity on windows of a text
file with the model's own HF tokenizer. Prints one JSON line.

usage: check_checkpoint.py CHECKPOINT TEXT CTX BEGIN END
"""
import json
import math
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def unpack(packed: torch.Tensor, bits: int, n_values: int, dim: int) -> torch.Tensor:
    """int32 words packed along `dim` -> int64 values (value i = stream bits [i*b, (i+1)*b))."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    if dim == 1:
        words = words.t()
    # bit stream: [n_words*32, cols]
    bit_idx = torch.arange(32, dtype=torch.int64)
    bits_all = ((words.unsqueeze(1) >> bit_idx.view(1, 32, 1)) & 1).reshape(-1, words.shape[1])
    vals = torch.zeros(n_values, words.shape[1], dtype=torch.int64)
    for b in range(bits):
        vals |= bits_all[b : n_values * bits : bits] << b
    return vals if dim == 0 else vals.t()


def main():
    ckpt, text_file, ctx, begin, end = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    cfg_json = json.load(open(f"{ckpt}/config.json"))
    q = cfg_json.pop("quantization_config")
    bits, fmt = q["bits"], q.get("checkpoint_format", "gptq")
    cfg = LlamaConfig(**cfg_json)
    model = LlamaForCausalLM(cfg).float().eval()
    t = load_file(f"{ckpt}/model.safetensors")
    state = {}
    n_quant = 0
    for name in t:
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            qweight, qzeros, scales = t[name], t[p + ".qzeros"], t[p + ".scales"].float()
            K, N = qweight.shape[0] * 32 // bits, qweight.shape[1]
            G = scales.shape[0]
            codes = unpack(qweight, bits, K, 0)            # [K, N]
            zeros = unpack(qzeros, bits, N, 1)             # [G, N]
            if fmt == "gptq":
                zeros = zeros + 1
            g_idx = t[p + ".g_idx"].long() if p + ".g_idx" in t else torch.arange(K) // (K // G)
            W = scales[g_idx] * (codes - zeros[g_idx]).float()   # [K, N]
            state[p + ".weight"] = W.t().contiguous()
            if p + ".bias" in t:
                state[p + ".bias"] = t[p + ".bias"].float()
            n_quant += 1
        elif not any(name.endswith(s) for s in (".qzeros", ".scales", ".g_idx")):
            state[name] = t[name].float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    model.to(dev)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok(open(text_file, encoding="utf-8").read(), return_tensors="pt").input_ids[0]
    nlls = []
    with torch.no_grad():
        for w in range(begin, end):
            x = ids[w * ctx : (w + 1) * ctx].unsqueeze(0).to(dev)
            logits = model(x).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
            nlls.append(nll.item())
    print(json.dumps({"checkpoint": ckpt, "bits": bits, "format": fmt, "quantized_layers": n_quant,
                      "tokens": len(ids), "windows": len(nlls), "ppl": math.exp(sum(nlls) / len(nlls))}))


if __name__ == "__main__":
    main()
