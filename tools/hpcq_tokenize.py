#!/usr/bin/env python3
"""Calibration (or evaluation) tokens from text, with the model's own tokenizer.

usage: hpcq_tokenize.py --model DIR --out FILE.i32 INPUT... [--field text] [--no-bos]
                        [--no-eos] [--max-tokens N] [--seqlen N]

INPUT: plain text files (.txt and anything not below: one document per file), JSON Lines
(.jsonl, one document per line, its --field string), Parquet (.parquet, the --field column:
the files of a downloaded Hugging Face dataset such as C4 or WikiText), or folders (every such
file below them, in sorted order). Empty documents are skipped.
Tokenizer: DIR/tokenizer.json through Hugging Face `tokenizers`, else DIR/tokenizer.model
through `sentencepiece` (as the model's own tokenizer; special tokens are not added by the
encoder: each document becomes bos + ids + eos, without bos / eos when asked). It must belong
to the model: its vocabulary must fit DIR/config.json's vocab_size, and its bos / eos ids must
be config.json's bos_token_id / eos_token_id where those are given.
Output: raw little-endian int32 ids, the token files hpcq quantize --calib and hpcq eval
--tokens read. Prints a summary: documents, tokens, and the windows available for --seqlen
(default: the model's max_position_embeddings, at most 2048).
Exit status 0, 1 on a bad input (the message says which and what to do), 2 on bad usage.
"""
import argparse
import json
import os
import sys

import numpy as np


def fail(msg, code=1):
    print(f"hpcq_tokenize: {msg}", file=sys.stderr)
    sys.exit(code)


class Tokenizer:
    """tokenizer.json (tokenizers) or tokenizer.model (sentencepiece) of a model folder."""

    def __init__(self, d):
        tj, tm = os.path.join(d, "tokenizer.json"), os.path.join(d, "tokenizer.model")
        if os.path.isfile(tj):
            try:
                from tokenizers import Tokenizer as HFT
            except ImportError:
                fail("tokenizer.json needs the Python package `tokenizers` (pip install tokenizers; "
                     "tools/install-deps.sh installs it)")
            self.path, self.t = tj, HFT.from_file(tj)
            self.size = self.t.get_vocab_size(with_added_tokens=True)
            self.encode = lambda s: self.t.encode(s, add_special_tokens=False).ids
            self.bos, self.eos = self._special_json(d)
        elif os.path.isfile(tm):
            try:
                import sentencepiece as spm
            except ImportError:
                fail("tokenizer.model needs the Python package `sentencepiece` (pip install "
                     "sentencepiece; tools/install-deps.sh installs it)")
            self.path, self.t = tm, spm.SentencePieceProcessor(model_file=tm)
            self.size = self.t.vocab_size()
            self.encode = self.t.encode
            self.bos = self.t.bos_id() if self.t.bos_id() >= 0 else None
            self.eos = self.t.eos_id() if self.t.eos_id() >= 0 else None
        else:
            fail(f"{d} has neither tokenizer.json nor tokenizer.model: copy the model's tokenizer "
                 "files into the model folder (they come with the Hugging Face checkpoint)")

    def _special_json(self, d):
        """bos / eos ids from tokenizer_config.json's bos_token / eos_token, when given."""
        ids = [None, None]
        p = os.path.join(d, "tokenizer_config.json")
        if os.path.isfile(p):
            cfg = json.load(open(p, encoding="utf-8"))
            for i, k in enumerate(("bos_token", "eos_token")):
                v = cfg.get(k)
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    ids[i] = self.t.token_to_id(v)
        return ids[0], ids[1]


def check_model(tok, cfg, d):
    """The tokenizer must belong to the model of config.json."""
    V = cfg.get("vocab_size")
    if not isinstance(V, int):
        fail(f"{d}/config.json has no vocab_size: not a Hugging Face model folder")
    if tok.size > V:
        fail(f"{tok.path} has {tok.size} tokens but the model's vocab_size is {V}: ids up to "
             f"{tok.size - 1} would not exist in the model; this is not the model's tokenizer")
    for name, mine in (("bos_token_id", tok.bos), ("eos_token_id", tok.eos)):
        want = cfg.get(name)
        if isinstance(want, int) and mine is not None and mine != want:
            fail(f"{tok.path}: its {name[:3]} token is id {mine}, config.json's {name} is {want}: "
                 "this is not the model's tokenizer")


def documents(path, field):
    """Yield (source, text) documents of one input file."""
    low = path.lower()
    if low.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}: not a JSON line ({e.msg})")
                text = rec.get(field) if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    fail(f"{path}:{n}: no string field \"{field}\" (fields: "
                         f"{', '.join(rec) if isinstance(rec, dict) else type(rec).__name__}); "
                         "choose it with --field")
                yield f"{path}:{n}", text
    elif low.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            fail("Parquet input needs the Python package `pyarrow` (pip install pyarrow; "
                 "tools/install-deps.sh installs it)")
        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            fail(f"{path}: no column \"{field}\" (columns: {', '.join(pf.schema_arrow.names)}); "
                 "choose it with --field")
        for batch in pf.iter_batches(columns=[field]):
            for i, text in enumerate(batch.column(0).to_pylist()):
                if isinstance(text, str):
                    yield path, text
    else:
        try:
            with open(path, encoding="utf-8") as f:
                yield path, f.read()
        except UnicodeDecodeError as e:
            fail(f"{path}: not UTF-8 text (byte {e.start}); give text, .jsonl or .parquet files")


def inputs(paths):
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs
                           if f.lower().endswith((".txt", ".jsonl", ".parquet")))
            if not found:
                fail(f"{p}: a folder without .txt, .jsonl or .parquet files")
            yield from found
        elif os.path.isfile(p):
            yield p
        else:
            fail(f"{p}: no such file or folder")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the model folder (config.json, tokenizer)")
    ap.add_argument("--out", required=True, help="the token file to write (raw int32)")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--field", default="text", help="JSON Lines field / Parquet column (text)")
    ap.add_argument("--no-bos", action="store_true", help="no bos before each document")
    ap.add_argument("--no-eos", action="store_true", help="no eos after each document")
    ap.add_argument("--max-tokens", type=int, default=0, help="stop after this many tokens")
    ap.add_argument("--seqlen", type=int, default=0, help="window length for the summary")
    a = ap.parse_args()
    cfgp = os.path.join(a.model, "config.json")
    if not os.path.isfile(cfgp):
        fail(f"{a.model} has no config.json: point --model at the Hugging Face model folder")
    cfg = json.load(open(cfgp, encoding="utf-8"))
    tok = Tokenizer(a.model)
    check_model(tok, cfg, a.model)
    ids, ndoc, nfiles = [], 0, 0
    total = 0
    for path in inputs(a.inputs):
        nfiles += 1
        for _, text in documents(path, a.field):
            if not text.strip():
                continue
            d = ([tok.bos] if tok.bos is not None and not a.no_bos else []) + tok.encode(text) + \
                ([tok.eos] if tok.eos is not None and not a.no_eos else [])
            ids.append(np.asarray(d, dtype="<i4"))
            ndoc += 1
            total += len(d)
            if a.max_tokens and total >= a.max_tokens:
                break
        if a.max_tokens and total >= a.max_tokens:
            break
    if total == 0:
        fail("the inputs hold no text")
    out = np.concatenate(ids)[: a.max_tokens or None]
    tmp = a.out + ".tmp"
    out.tofile(tmp)
    os.replace(tmp, a.out)
    S = a.seqlen or min(cfg.get("max_position_embeddings", 2048), 2048)
    head = (f"{a.out}: {len(out)} tokens from {ndoc} documents in {nfiles} file(s), tokenizer "
            f"{os.path.basename(tok.path)} ({tok.size} tokens); ")
    if len(out) < S:
        print(head + f"fewer than one window of {S}: hpcq needs at least --seqlen tokens "
              "(give more text or a smaller --seqlen)")
    else:
        print(head + f"{len(out) // S} non-overlapping windows of {S} (hpcq eval), about "
              f"{len(out) // S} calibration windows of {S} without overlap (hpcq quantize "
              "--nsamples; more overlap, and hpcq warns)")


if __name__ == "__main__":
    main()
