#!/usr/bin/env python3
# Writes a random PEFT LoRA adapter (r=16 on q,k,v,o,gate,up,down, fp32, lora_alpha 32) for a
# Llama-family model folder with one model.safetensors, as PEFT lays it out: the input of the
# merge-lora measurement in docs/measurements.md. Usage: make_lora_adapter.py MODEL_DIR OUT_DIR
import json, struct, random, os, sys
base = sys.argv[1]
out = sys.argv[2]
f = open(base + '/model.safetensors', 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))
r = 16
random.seed(0)
tensors = {}
for name, v in h.items():
    if name == '__metadata__' or not any(p in name for p in ('q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj')): continue
    out_f, in_f = v['shape']; m = name[:-len('.weight')]
    tensors['base_model.model.' + m + '.lora_A.weight'] = [r, in_f]
    tensors['base_model.model.' + m + '.lora_B.weight'] = [out_f, r]
header = {}; off = 0; data = []
for name in sorted(tensors):
    shape = tensors[name]; cnt = shape[0] * shape[1]
    header[name] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [off, off + 4 * cnt]}; off += 4 * cnt
    data.append(struct.pack('<%df' % cnt, *[random.uniform(-0.01, 0.01) for _ in range(cnt)]))
hb = json.dumps(header).encode(); hb += b' ' * ((8 - (8 + len(hb)) % 8) % 8)
os.makedirs(out, exist_ok=True)
with open(out + '/adapter_model.safetensors', 'wb') as g: g.write(struct.pack('<Q', len(hb)) + hb + b''.join(data))
json.dump({'peft_type': 'LORA', 'r': r, 'lora_alpha': 32, 'target_modules': ['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj'], 'bias': 'none', 'use_rslora': False}, open(out + '/adapter_config.json', 'w'))
