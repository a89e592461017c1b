"""SID-v2 tokenizer (PLUM section 2.1): model, training, reports; the SID service builds on it.

What other components use (import the modules, not this package, so `import tokenizer`
stays free of JAX):

    from tokenizer.checkpoint import load_tokenizer   # load_tokenizer(CKPT_DIR, step=None)
    tok = load_tokenizer(path)
    tok.sid_version                                    # 'sidv2-<12 hex>', a content hash
    tok.encode({name: [N, d_m] floats, ...})           # -> np.int32 [N, L] codes
    tok.modalities, tok.level_sizes                    # expected inputs, codes per level
"""
