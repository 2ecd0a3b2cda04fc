#!/usr/bin/env python3
"""Independent loader for GPTQ safetensors checkpoints, written from the PUBLISHED layout
(the GPTQ checkpoint format that transformers / AutoGPTQ / vLLM load), not from hpcq's code.
Needs only Python 3 and numpy (safetensors files are parsed here; no torch).

Used by tests/test_export.sh to prove `hpcq export`:

  gptq_reference_loader.py check --source MODEL_DIR [--no-forward]
      --case CKPT_DIR VIEW.safetensors gptq|gptq_v2 BITS DESC_ACT [--case ...]

  1. config.json / quantize_config.json carry quantization_config (quant_method gptq, bits,
     group_size, desc_act, sym, checkpoint_format, ...);
  2. every quantized linear has the published dtypes and shapes (qweight int32 [in*b/32, out],
     qzeros int32 [ngroups, out*b/32], scales F16 [ngroups, out], g_idx int32 [in]) for the
     in/out features the model config implies;
  3. W = scales[g_idx] * (q - zero) (zero = stored + 1 for "gptq", stored for "gptq_v2")
     equals, bit for bit, hpcq's dequantized weight "<prefix>.weight" in VIEW (written by the
     test helper export_hpcq_view from the .h5 result);
     A quantization_config "dynamic" (GPTQModel's per-module overrides, which transformers
     reads too) gives a module other bits / group_size ("+:REGEX": {...}) or leaves it
     unquantized ("-:REGEX": {}, a plain "<prefix>.weight"): the first key whose regex
     re.match-es the module name decides, as in GPTQModel's dynamic_get;
  4. every unquantized tensor has the source checkpoint's dtype and exactly its bytes;
  5. a numpy Llama forward (float64, from the published architecture) over VIEW["ids"] gives
     logits within fp16 tolerance of hpcq's VIEW["logits"] and the same perplexity;
  prints one summary line per checkpoint and exits 1 on any mismatch.

  gptq_reference_loader.py zeros CKPT_DIR
      prints the number of stored zero points equal to 0 after decoding to the true zero
      (the ones the v1 "gptq" convention cannot store).
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np

# ----------------------------------------------------------------------------------------
# safetensors: u64 little-endian header length N, N bytes of JSON, then the data section.
_DT = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32,
       "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    """{name: (dtype string, numpy array)}; BF16 comes back as raw uint16 bits."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    out = {}
    end_max = 0
    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        dt = np.dtype(_DT[e["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(data[b:en], dtype=dt).reshape(e["shape"])
        out[name] = (e["dtype"], arr)
        spans.append((b, en))
        end_max = max(end_max, en)
    spans.sort()
    pos = 0
    for b, en in spans:  # the format forbids holes and overlaps
        if b != pos:
            raise ValueError(f"{path}: data offsets not contiguous at {b} (expected {pos})")
        pos = en
    if pos != len(data):
        raise ValueError(f"{path}: data section has {len(data)} bytes, tensors cover {pos}")
    return out, header.get("__metadata__")


def load_checkpoint(d):
    """All tensors of a checkpoint folder (single file or sharded with an index)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx):
        with open(idx) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
        total = 0
        for fn in files:
            t, meta = read_safetensors(os.path.join(d, fn))
            for k, v in t.items():
                if index["weight_map"].get(k) != fn:
                    raise ValueError(f"{k} is in {fn} but the index says {index['weight_map'].get(k)}")
                tensors[k] = v
                total += v[1].nbytes
        if set(tensors) != set(index["weight_map"]):
            raise ValueError("index weight_map and shard contents differ")
        if index["metadata"]["total_size"] != total:
            raise ValueError(f"index total_size {index['metadata']['total_size']} != {total}")
    else:
        tensors, meta = read_safetensors(os.path.join(d, "model.safetensors"))
        if not meta or meta.get("format") != "pt":
            raise ValueError("model.safetensors lacks __metadata__ format=pt (transformers wants it)")
    return tensors


def as_f32(dtype, a):
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


# ----------------------------------------------------------------------------------------
# GPTQ packing, as published: int32 words, values packed low bits first.
#  2/4/8 bits: value j of a word in bits [b*j, b*j + b).
#  3 bits: 32 values in 3 words; word0 = v0..v9 (bits 0-29) + low 2 bits of v10 (bits 30-31);
#          word1 = high bit of v10 (bit 0), v11..v20 (bits 1-30), low bit of v21 (bit 31);
#          word2 = high 2 bits of v21 (bits 0-1), v22..v31 (bits 2-31).

def unpack(words, bits, axis):
    """Unpack int32 words along `axis` into int64 values."""
    w = np.moveaxis(words, axis, 0).view(np.uint32).astype(np.int64)
    if bits in (2, 4, 8):
        pf = 32 // bits
        mask = (1 << bits) - 1
        vals = np.stack([(w >> (bits * j)) & mask for j in range(pf)], axis=1)  # [R, pf, ...]
        vals = vals.reshape((w.shape[0] * pf,) + w.shape[1:])
    elif bits == 3:
        if w.shape[0] % 3:
            raise ValueError("3-bit packed dimension is not a multiple of 3 words")
        w0, w1, w2 = w[0::3], w[1::3], w[2::3]
        v = [None] * 32
        for j in range(10):
            v[j] = (w0 >> (3 * j)) & 7
        v[10] = ((w0 >> 30) & 3) | ((w1 & 1) << 2)
        for j in range(11, 21):
            v[j] = (w1 >> (3 * (j - 11) + 1)) & 7
        v[21] = ((w1 >> 31) & 1) | ((w2 & 3) << 1)
        for j in range(22, 32):
            v[j] = (w2 >> (3 * (j - 22) + 2)) & 7
        vals = np.stack(v, axis=1).reshape((w0.shape[0] * 32,) + w.shape[1:])
    else:
        raise ValueError(f"unsupported bits {bits}")
    return np.moveaxis(vals, 0, axis)


def dequantize(qweight, qzeros, scales, g_idx, bits, checkpoint_format):
    """W [out, in] float32 = scales[g, o] * (q[i, o] - zero[g, o]),  g = g_idx[i]."""
    q = unpack(qweight, bits, 0)  # [in, out]
    z = unpack(qzeros, bits, 1)   # [ngroups, out]
    if checkpoint_format == "gptq":
        z = z + 1                 # v1 stores zero - 1
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"unknown checkpoint_format {checkpoint_format}")
    s = scales.astype(np.float32)
    g = g_idx.astype(np.int64)
    # products of an fp16 value and an integer below 2^9 are exact in float32
    return (s[g] * (q - z[g]).astype(np.float32)).T.copy()


# ----------------------------------------------------------------------------------------
# Llama forward (Hugging Face LlamaForCausalLM; Qwen3's q/k norms when present; the sparse MLP
# of Mixtral / Qwen3-MoE blocks), float64.

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def moe_layer(cfg, layer):
    """A sparse block (transformers: every Mixtral block; a Qwen3-MoE block unless in
    mlp_only_layers, when (layer + 1) % decoder_sparse_step == 0)."""
    arch = (cfg.get("architectures") or [""])[0]
    if arch == "MixtralForCausalLM":
        return True
    if arch != "Qwen3MoeForCausalLM":
        return False
    n = moe_dims(cfg)[0]
    return (layer not in (cfg.get("mlp_only_layers") or []) and n > 0 and
            (layer + 1) % cfg.get("decoder_sparse_step", 1) == 0)


def expert_names(cfg, layer, e):
    """(gate, up, down) names of expert e without .weight, in the published layouts."""
    if cfg["architectures"][0] == "MixtralForCausalLM":
        p = f"model.layers.{layer}.block_sparse_moe.experts.{e}."
        return p + "w1", p + "w3", p + "w2"
    p = f"model.layers.{layer}.mlp.experts.{e}."
    return p + "gate_proj", p + "up_proj", p + "down_proj"


def moe_dims(cfg):
    """(experts, top-k, expert intermediate size, renormalise top-k) with transformers' defaults."""
    if cfg["architectures"][0] == "MixtralForCausalLM":
        return cfg.get("num_local_experts", 8), cfg.get("num_experts_per_tok", 2), \
            cfg["intermediate_size"], True
    return cfg.get("num_experts", cfg.get("num_local_experts", 128)), \
        cfg.get("num_experts_per_tok", 8), cfg.get("moe_intermediate_size", 768), \
        cfg.get("norm_topk_prob", False)


def moe_route(cfg, W, layer, x):
    """Rows x [n, H] -> (top [n, K] chosen experts, wt [n, K] weights): softmax of the router
    logits, the K most probable (ties: the lower index first), renormalised when the model
    says so (Mixtral always, Qwen3-MoE with norm_topk_prob)."""
    _, K, _, norm = moe_dims(cfg)
    mix = cfg["architectures"][0] == "MixtralForCausalLM"
    logits = x @ W[f"model.layers.{layer}.{'block_sparse_moe' if mix else 'mlp'}.gate.weight"].T
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    top = np.argsort(-prob, axis=-1, kind="stable")[:, :K]
    wt = np.take_along_axis(prob, top, -1)
    return top, (wt / wt.sum(-1, keepdims=True) if norm else wt)


def moe_mlp(cfg, W, layer, h):
    """The sparse MLP as transformers' Mixtral / Qwen3-MoE blocks compute it: the sum of
    weight * down(silu(gate(h)) * up(h)) over the experts moe_route chose."""
    shape = h.shape
    x = h.reshape(-1, shape[-1])
    top, wt = moe_route(cfg, W, layer, x)
    out = np.zeros_like(x)
    for e in range(moe_dims(cfg)[0]):
        t, k = np.nonzero(top == e)
        if len(t) == 0:
            continue
        gn, un, dn = expert_names(cfg, layer, e)
        g = x[t] @ W[gn + ".weight"].T
        u = x[t] @ W[un + ".weight"].T
        out[t] += (g / (1.0 + np.exp(-g)) * u) @ W[dn + ".weight"].T * wt[t, k][:, None]
    return out.reshape(shape)


def llama_logits(cfg, W, ids, moe_hook=None):
    """ids [nseq, T] -> logits [nseq, T, vocab]; W: name -> float64 array (HF names).
    moe_hook(layer, h): called with the sparse MLP's input of every MoE block."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    rp = cfg.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta in it
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling") or rp or None
    if rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise NotImplementedError(f"rope_scaling {rs}")
    nseq, T = ids.shape
    x = W["model.embed_tokens.weight"][ids]  # [nseq, T, H]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)  # [T, hd]
    sin = np.concatenate([np.sin(ang)] * 2, -1)

    def rope(t):  # [nseq, heads, T, hd], rotate_half convention
        h = hd // 2
        rot = np.concatenate([-t[..., h:], t[..., :h]], -1)
        return t * cos + rot * sin

    def lin(name, v):
        y = v @ W[name + ".weight"].T
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    def mlp(p, h):
        g = lin(p + "mlp.gate_proj", h)
        u = lin(p + "mlp.up_proj", h)
        return lin(p + "mlp.down_proj", g / (1.0 + np.exp(-g)) * u)

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(p + "self_attn.q_proj", h).reshape(nseq, T, nh, hd).transpose(0, 2, 1, 3)
        k = lin(p + "self_attn.k_proj", h).reshape(nseq, T, nkv, hd).transpose(0, 2, 1, 3)
        v = lin(p + "self_attn.v_proj", h).reshape(nseq, T, nkv, hd).transpose(0, 2, 1, 3)
        if p + "self_attn.q_norm.weight" in W:  # Qwen3: RMSNorm of each head before RoPE
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q), rope(k)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        a = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(nseq, T, nh * hd)
        x = x + lin(p + "self_attn.o_proj", o)
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        if moe_hook and moe_layer(cfg, layer):
            moe_hook(layer, h)
        x = x + (moe_mlp(cfg, W, layer, h) if moe_layer(cfg, layer) else mlp(p, h))
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def linear_shapes(cfg, layer):
    """(in, out) of each quantized projection of a block, by name after "model.layers.N.":
    the Llama ones, or the attention and every expert's of a sparse MoE block."""
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    I = cfg["intermediate_size"]
    att = {"self_attn.q_proj": (H, nh * hd), "self_attn.k_proj": (H, nkv * hd),
           "self_attn.v_proj": (H, nkv * hd), "self_attn.o_proj": (nh * hd, H)}
    if not moe_layer(cfg, layer):
        return att | {"mlp.gate_proj": (H, I), "mlp.up_proj": (H, I), "mlp.down_proj": (I, H)}
    E, _, Ie, _ = moe_dims(cfg)
    pre = f"model.layers.{layer}."
    for e in range(E):
        g, u, d = (n[len(pre):] for n in expert_names(cfg, layer, e))
        att |= {g: (H, Ie), u: (H, Ie), d: (Ie, H)}
    return att


# ----------------------------------------------------------------------------------------

def module_settings(qc, name):
    """(bits, group_size) of module `name`, or None when the config's "dynamic" leaves it
    unquantized: the first pattern (in order) that re.match-es the name decides, "-:" skips,
    "+:" (or no prefix) overrides the keys it names (GPTQModel's dynamic_get)."""
    for pat, ov in (qc.get("dynamic") or {}).items():
        if pat.startswith("-:"):
            if re.match(pat[2:], name):
                return None
        elif re.match(pat[2:] if pat.startswith("+:") else pat, name):
            return ov.get("bits", qc["bits"]), ov.get("group_size", qc["group_size"])
    return qc["bits"], qc["group_size"]


def check(args, ckpt):
    errors = []

    def err(msg):
        errors.append(msg)

    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    if not qc:
        raise SystemExit(f"{ckpt}: config.json has no quantization_config")
    with open(os.path.join(ckpt, "quantize_config.json")) as f:
        qc2 = json.load(f)
    for key in ("quant_method", "bits", "group_size", "desc_act", "sym", "damp_percent",
                "true_sequential", "static_groups", "checkpoint_format"):
        if key not in qc:
            err(f"quantization_config lacks {key}")
        elif qc2.get(key) != qc[key]:
            err(f"quantize_config.json {key}={qc2.get(key)} != config.json's {qc[key]}")
    if qc.get("quant_method") != "gptq":
        err(f"quant_method {qc.get('quant_method')}")
    bits, gs, fmt = qc["bits"], qc["group_size"], qc["checkpoint_format"]
    if args.expect_format and fmt != args.expect_format:
        err(f"checkpoint_format {fmt}, expected {args.expect_format}")
    if args.expect_bits and bits != args.expect_bits:
        err(f"bits {bits}, expected {args.expect_bits}")
    if args.expect_desc_act is not None and qc["desc_act"] != bool(args.expect_desc_act):
        err(f"desc_act {qc['desc_act']}, expected {bool(args.expect_desc_act)}")
    with open(os.path.join(args.source, "config.json")) as f:
        src_cfg = json.load(f)
    for k, v in src_cfg.items():
        if cfg.get(k) != v:
            err(f"config.json {k} = {cfg.get(k)!r}, source has {v!r}")

    T = load_checkpoint(ckpt)
    view, _ = read_safetensors(args.view)
    src = load_checkpoint(args.source)
    W = {}
    nlin = 0
    sym_v1_words = set()
    skipped = set()
    for layer in range(cfg["num_hidden_layers"]):
        for sub, (fin, fout) in linear_shapes(cfg, layer).items():
            p = f"model.layers.{layer}.{sub}"
            ms = module_settings(qc, p)
            if ms is None:  # left unquantized by "dynamic": a plain weight (checked below)
                skipped.add(p)
                if p + ".weight" not in T:
                    err(f"{p}: dynamic skips it but {p}.weight is missing")
                continue
            bits, gs = ms
            maxq = (1 << bits) - 1
            if p + ".weight" in T:
                err(f"{p}.weight present in a quantized checkpoint")
            need = {"qweight": ("I32", (fin * bits // 32, fout)),
                    "qzeros": ("I32", (math.ceil(fin / (gs if gs > 0 else fin)), fout * bits // 32)),
                    "scales": ("F16", (math.ceil(fin / (gs if gs > 0 else fin)), fout)),
                    "g_idx": ("I32", (fin,))}
            got = {}
            for part, (dt, shp) in need.items():
                if p + "." + part not in T:
                    err(f"{p}.{part} missing")
                    continue
                tdt, arr = T[p + "." + part]
                if tdt != dt or tuple(arr.shape) != shp:
                    err(f"{p}.{part}: {tdt} {tuple(arr.shape)}, published layout says {dt} {shp}")
                got[part] = arr
            if len(got) != 4:
                continue
            nlin += 1
            g = got["g_idx"].astype(np.int64)
            ng = need["scales"][1][0]
            if g.min() < 0 or g.max() >= ng:
                err(f"{p}.g_idx outside [0, {ng})")
                continue
            gsz = gs if gs > 0 else fin
            if not qc["desc_act"]:
                if not np.array_equal(g, np.arange(fin) // gsz):
                    err(f"{p}.g_idx is not i // group_size without desc_act")
            else:  # every group holds group_size columns (the last one the rest)
                counts = np.bincount(g, minlength=ng)
                want = np.full(ng, gsz)
                want[-1] = fin - gsz * (ng - 1)
                if not np.array_equal(counts, want):
                    err(f"{p}.g_idx group sizes {counts.tolist()[:8]}..., expected {gsz}")
            z = unpack(got["qzeros"], bits, 1) + (1 if fmt == "gptq" else 0)
            if z.min() < 0 or z.max() > maxq:
                err(f"{p}: zero points outside [0, {maxq}]")
            if qc["sym"] and not np.all(z == (maxq + 1) // 2):
                err(f"{p}: sym but zero points differ from {(maxq + 1) // 2}")
            if qc["sym"] and fmt == "gptq" and bits == 4:
                sym_v1_words.update(np.unique(got["qzeros"].view(np.uint32)).tolist())
            Wq = dequantize(got["qweight"], got["qzeros"], got["scales"], got["g_idx"], bits, fmt)
            ref = view.get(p + ".weight")
            if ref is None:
                err(f"view lacks {p}.weight")
            elif ref[1].shape != Wq.shape or not np.array_equal(ref[1], Wq):
                d = np.abs(ref[1].astype(np.float64) - Wq).max() if ref[1].shape == Wq.shape else None
                err(f"{p}: dequantized weight differs from hpcq's (max |diff| {d})")
            W[p + ".weight"] = Wq.astype(np.float64)
    if sym_v1_words and sym_v1_words != {0x77777777}:
        err(f"symmetric 4-bit v1 qzeros words {sorted(hex(x) for x in sym_v1_words)[:4]}, "
            "published value 0x77777777")
    # unquantized tensors: original dtype and bytes
    for name, (dt, arr) in T.items():
        if any(name.endswith(s) for s in (".qweight", ".qzeros", ".scales", ".g_idx")):
            continue
        if name not in src:
            err(f"{name} not in the source checkpoint")
            continue
        sdt, sarr = src[name]
        if sdt != dt or sarr.shape != arr.shape or sarr.tobytes() != arr.tobytes():
            err(f"{name}: {dt} {arr.shape} differs from the source {sdt} {sarr.shape}")
        W[name] = as_f32(dt, arr).astype(np.float64)
    quantized = {f"model.layers.{l}.{s}" for l in range(cfg["num_hidden_layers"])
                 for s in linear_shapes(cfg, l)} - skipped
    for name in src:
        if name.endswith(".weight") and name[:-7] in quantized:
            continue
        if name not in T:
            err(f"source tensor {name} missing from the checkpoint")
    if nlin != len(quantized):
        err(f"{nlin} quantized linears, expected {len(quantized)}")

    bits, gs = qc["bits"], qc["group_size"]
    summary = f"{ckpt}: bits {bits} gs {gs} desc_act {qc['desc_act']} sym {qc['sym']} {fmt}: " \
              f"{nlin} linears dequantize exactly to hpcq's weights" + \
              (f" ({len(qc['dynamic'])} dynamic rules, {len(skipped)} linears unquantized)"
               if qc.get("dynamic") else "")
    if not args.no_forward and not errors:
        ids = view["ids"][1].astype(np.int64)
        logits = llama_logits(cfg, W, ids)
        hl = view["logits"][1].astype(np.float64).reshape(logits.shape)
        scale = np.abs(logits).max()
        dmax = np.abs(logits - hl).max()
        # fp16 tolerance: a few units of fp16 rounding (2^-11) of the largest logit
        tol = 4 * 2.0 ** -11 * max(1.0, scale)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = (lse[:, :-1] - np.take_along_axis(logits[:, :-1], ids[:, 1:, None], -1)[..., 0]).sum()
        ppl = math.exp(nll / (ids.shape[0] * (ids.shape[1] - 1)))
        hppl = math.exp(float(view["nll_sum"][1][0]) / (ids.shape[0] * (ids.shape[1] - 1)))
        summary += f"; logits max |diff| {dmax:.2e} (max |logit| {scale:.2f}, tol {tol:.1e}), " \
                   f"ppl numpy {ppl:.6f} hpcq {hppl:.6f}"
        if not dmax <= tol:
            err(f"logits differ from hpcq's by {dmax:.3e} > {tol:.3e}")
        if not abs(ppl - hppl) <= 1e-4 * ppl:
            err(f"perplexity {ppl} vs hpcq's {hppl}: relative difference above 1e-4")
    if errors:
        for e in errors[:20]:
            print(f"FAIL {ckpt}: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def count_zeros(ckpt):
    with open(os.path.join(ckpt, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    T = load_checkpoint(ckpt)
    n = 0
    first = None
    for name, (dt, arr) in T.items():
        if name.endswith(".qzeros"):
            b = module_settings(qc, name[:-len(".qzeros")])[0]
            z = unpack(arr, b, 1) + (1 if qc["checkpoint_format"] == "gptq" else 0)
            c = int((z == 0).sum())
            if c and first is None:
                first = name[:-len(".qzeros")]
            n += c
    print(n, first or "-")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--case", nargs=5, action="append", required=True,
                   metavar=("CKPT", "VIEW", "FORMAT", "BITS", "DESC_ACT"),
                   help="checkpoint folder, hpcq view file, expected checkpoint_format, bits "
                        "and desc_act (0/1); repeat for several checkpoints")
    c.add_argument("--source", required=True, help="the source Hugging Face model folder")
    c.add_argument("--no-forward", action="store_true")
    z = sub.add_parser("zeros")
    z.add_argument("ckpt")
    a = ap.parse_args()
    if a.cmd == "zeros":
        return count_zeros(a.ckpt)
    rc = 0
    for ckpt, view, fmt, bits, desc_act in a.case:
        a.view, a.expect_format = view, fmt
        a.expect_bits, a.expect_desc_act = int(bits), int(desc_act)
        try:
            rc |= check(a, ckpt)
        except Exception as e:  # a malformed checkpoint is a failure, not a crash
            print(f"FAIL {ckpt}: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
