"""What the mutation check mutates, and which tests judge each file.

``PY_TARGETS``: repository-relative file -> (area, test files, sample size). Test files are the smallest set that
covers the file, fastest and broadest first (pytest stops at the first failure with -x). ``sample`` is how many
of the file's mutants a default run draws (stratified by operator, fixed seed); ``--all`` runs every one.

``SKIP``: names (functions, classes, module-level assignments) left unmutated, each with the reason.
``EQUIVALENT``: mutant ids (see ``Mutant.id``) that cannot change any result, with the argument why; a survivor
listed here is reported as "equivalent", not as a blind spot. ``GPU_ONLY``: mutants only a gpu-marked test can
kill (sizes the interpreter cannot reach), with that test; they still count as survivors on a CPU run.
``KILLED_ELSEWHERE``: mutants a test outside the per-mutant map kills (too slow to run per mutant), checked once.
"""
from __future__ import annotations

OPS = "tests/ops"
BACKEND = "tests/test_backend.py"  # dispatch: every kernel dtype really runs its kernel

PY_TARGETS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "kernels/gelu.py": ("kernels", (f"{OPS}/test_activation.py",), 20),
    "kernels/norm.py": ("kernels", (f"{OPS}/test_norm.py",), 26),
    # (eighth session) the forward's relative position bias, softmax statistics (lse) and dropout are judged by
    # test_position_bias_kernels.py (bias vs float64, dense / varlen / decode, ~6 s) and test_attention_bwd.py (lse
    # and the dropout mask through the backward, ~11 s), run after the two main files (-x: a killed mutant stops early)
    "kernels/attention/fwd.py": ("kernels", (f"{OPS}/test_attention.py", f"{OPS}/test_varlen.py",
                                             f"{OPS}/test_position_bias_kernels.py", f"{OPS}/test_attention_bwd.py"),
                                 16),
    # kernels/attention/fwd_kernels.py (split from fwd.py): the forward's @triton.jit kernels, judged as fwd.py was
    "kernels/attention/fwd_kernels.py": ("kernels", (f"{OPS}/test_attention.py", f"{OPS}/test_varlen.py",
                                                     f"{OPS}/test_position_bias_kernels.py",
                                                     f"{OPS}/test_attention_bwd.py"), 26),
    "kernels/attention/decode.py": ("kernels", (f"{OPS}/test_decode.py", f"{OPS}/test_position_bias_kernels.py"), 40),
    # (added 2026-11-30, eighth session) the flash-attention backward kernels (preprocess, dK/dV, dQ; masks, causal
    # alignments, dropout): dq / dk / dv vs float64 autograd in the interpreter (test_attention_bwd.py, ~11 s);
    # common.py's jit helpers and host choices are shared with the forward and decode kernels, so their tests follow
    # (test_attention_common.py first: the TMA descriptors' strides, no kernel, ~0.1 s)
    "kernels/attention/bwd.py": ("kernels", (f"{OPS}/test_attention_bwd.py",), 12),
    # kernels/attention/bwd_kernels.py (split from bwd.py): the backward's @triton.jit kernels, judged as bwd.py was
    "kernels/attention/bwd_kernels.py": ("kernels", (f"{OPS}/test_attention_bwd.py",), 32),
    "kernels/attention/common.py": ("kernels", (f"{OPS}/test_attention_common.py", f"{OPS}/test_attention_bwd.py",
                                                f"{OPS}/test_attention.py", f"{OPS}/test_position_bias_kernels.py",
                                                f"{OPS}/test_varlen.py", f"{OPS}/test_decode.py"), 20),
    "engine/ops/_checks.py": ("ops", (BACKEND, f"{OPS}/test_norm.py", f"{OPS}/test_activation.py"), 6),
    "engine/ops/activation.py": ("ops", (BACKEND, f"{OPS}/test_activation.py"), 8),
    "engine/ops/norm.py": ("ops", (BACKEND, f"{OPS}/test_norm.py"), 12),
    "engine/ops/attention.py": ("ops", (BACKEND, f"{OPS}/test_attention.py", f"{OPS}/test_position_bias.py"), 12),
    # engine/ops/varlen.py (split from attention.py): varlen attention, its cu_seqlens checks, unpad / pad
    "engine/ops/varlen.py": ("ops", (BACKEND, f"{OPS}/test_varlen.py", f"{OPS}/test_position_bias.py"), 10),
    "engine/ops/decode.py": ("ops", (BACKEND, f"{OPS}/test_decode.py", f"{OPS}/test_position_bias.py"), 12),
    "engine/ops/position_bias.py": ("ops", (f"{OPS}/test_position_bias.py",), 8),
    # (tests/test_decoding.py first: the keyword rules, defaults, EOS / pad / seeds and generate's bookkeeping on a
    # one-layer model vs transformers, about 5 s; then test_generate.py's broader comparisons, about 64 s)
    "engine/generate.py": ("generate", ("tests/test_decoding.py", "tests/test_generate.py"), 26),
    # engine/decoding.py (split from generate.py): the decoding keywords' checks and defaults, step seeds
    "engine/decoding.py": ("generate", ("tests/test_decoding.py", "tests/test_generate.py"), 6),
    # per-row option parsing, prev_tokens packing and probs_reference: every probs vs HF's logits processors and
    # vs probs_reference (so a wrong reference fails too), bad options by name
    "engine/sampling.py": ("generate", ("tests/test_sampling.py",), 24),
    # T5 generation: greedy / EOS / repetition penalty token-identical to transformers' generate, sampling, stream
    "engine/seq2seq.py": ("generate", ("tests/test_t5.py",), 20),
    # pooling, Dense modules, token-budget batches: MiniLM vs transformers and float64 pooling; T5 + Dense vs float64
    "engine/embed.py": ("models", ("tests/test_embed.py", "tests/test_embed_t5.py"), 24),
    # checkpoint reading / convert: named errors first, then every family and route (safetensors, convert, bin,
    # shards) vs transformers, then convert's folder handling
    "engine/checkpoint.py": ("models", ("tests/test_checkpoint.py", "tests/test_models.py", "tests/test_convert.py"),
                             24),
    # engine/convert.py (split from checkpoint.py): convert's folder handling and atomic write, then the CLI's
    # refusals, then every family converted and reloaded vs transformers
    "engine/convert.py": ("models", ("tests/test_convert.py", "tests/test_checkpoint.py", "tests/test_models.py"), 6),
    # model code vs transformers: BERT / ALBERT / RoBERTa / GPT-2 outputs on every route, then gradients and
    # dropout (train / eval), then check_inputs' named errors
    "engine/models/blocks.py": ("models", ("tests/test_models.py", "tests/models/test_training.py",
                                           "tests/test_checkpoint.py"), 14),
    # (test_graphs: the CUDA-graph hooks, run bucketed on the CPU vs the eager forward)
    "engine/models/bert.py": ("models", ("tests/test_models.py", "tests/models/test_training.py",
                                         "tests/test_graphs.py"), 12),
    # GPT-2 / GPT2LMHead vs transformers (every route, half precision, the KV-cache hook), then gradients and dropout
    "engine/models/gpt2.py": ("models", ("tests/test_models.py", "tests/models/test_training.py"), 10),
    # T5 / mT5 / UMT5 outputs, generation and errors vs transformers, then T5 gradients and dropout, graph hooks
    "engine/models/t5.py": ("models", ("tests/test_t5.py", "tests/models/test_training.py", "tests/test_graphs.py"),
                            12),
    # engine/config.py, backend.py, graphs.py (added 2026-11-30): config.json -> ModelConfig judged by
    # tests/test_config.py (every family's fields and defaults vs transformers' config classes, the named refusals,
    # engine's own config.json, generation_config.json); the dispatch rules by tests/test_backend.py (environment
    # parsing, the Route cache, forced Triton's errors, every op on its kernel); the encoder graphs' bucketing and
    # padding by tests/test_graphs.py (run eagerly on the CPU vs the eager forward; the real graphs are gpu-marked)
    "engine/config.py": ("models", ("tests/test_config.py",), 17),
    # engine/hf_config.py (split from config.py: the HF config.json parsing; the sample of 40 shared 17 + 23 as
    # the two files' mutants, 148 + 200)
    "engine/hf_config.py": ("models", ("tests/test_config.py",), 23),
    "engine/backend.py": ("ops", ("tests/test_backend.py",), 24),
    "engine/graphs.py": ("models", ("tests/test_graphs.py",), 24),
    # the corpus embedding job: shard store (lines <-> shards, resume), the job loop and input readers; judged by
    # tests/test_corpus.py (vectors vs Embedder.encode on the same lines, resume / shard mapping vs the file)
    "engine/corpus/store.py": ("corpus", ("tests/test_corpus.py",), 12),
    "engine/corpus/job.py": ("corpus", ("tests/test_corpus.py",), 12),
    "engine/corpus/inputs.py": ("corpus", ("tests/test_corpus.py",), 12),
    # the transformers integration (engine/hf/attention.py, patching.py, forwards.py, _hook.py): attention vs
    # transformers' "sdpa" (function and whole models), the mask function vs sdpa_mask, registration; patch /
    # unpatch of every family vs the unpatched model (packing, training, generation, the kernels in the interpreter)
    "engine/hf/attention.py": ("hf", ("tests/test_hf_attention.py", "tests/test_hf_patch.py"), 14),
    "engine/hf/patching.py": ("hf", ("tests/test_hf_patch.py",), 14),
    "engine/hf/forwards.py": ("hf", ("tests/test_hf_patch.py",), 14),
    "engine/hf/_hook.py": ("hf", ("tests/test_hf_attention.py",), 6),
    # (added 2026-11-30, fifth session) atomic directory / file replacement: convert's folder handling and the
    # fault-injection tests that kill the writer at every step (the file system's state after each)
    "engine/atomic.py": ("models", ("tests/test_atomic.py", "tests/test_convert.py"), 25),
    # the session pool (checkout / give back / drop on error) and the static KV cache (its own writes and outputs
    # vs float64, then the pool rules, then generate vs transformers)
    "engine/sessions.py": ("generate", ("tests/test_sessions.py", "tests/test_generate.py"), 8),
    "engine/kv_cache.py": ("generate", ("tests/test_kv_cache.py", "tests/test_sessions.py", "tests/test_generate.py"),
                           7),
    # SDPA's full argument check vs torch's own SDPA (accepted shapes give its values, refusals name the argument)
    "engine/ops/sdpa_args.py": ("ops", (f"{OPS}/test_sdpa_signature.py",), 15),
    # (added 2026-12-01, ninth session) python -m engine's generate / fill-mask / classify / embed commands: one-line
    # errors, exit codes and outputs vs the Python API (test_cli.py ~7 s, test_cli_t5.py ~2 s, test_user_input.py
    # ~3 s); the embed command's corpus mode is also judged by test_corpus.py (~50 s, last)
    "engine/cli.py": ("models", ("tests/test_cli.py", "tests/test_cli_t5.py", "tests/test_user_input.py"), 12),
    "engine/cli_embed.py": ("models", ("tests/test_cli.py", "tests/test_user_input.py", "tests/test_corpus.py"), 12),
    # (added 2026-11-30, sixth session) what an embedding is for a folder (sentence-transformers' module files):
    # every field of tiny module-file folders vs the file format (test_embed_spec.py, ~1 s: most mutants die
    # there), then MiniLM / T5 embeddings vs transformers + float64 pooling, the refusals by file and field
    "engine/embed_spec.py": ("models", ("tests/test_embed_spec.py", "tests/test_embed.py", "tests/test_embed_t5.py"),
                             20),
    # tokenizer loading and batch padding / truncation: tiny tokenizer.json / vocab.txt folders vs transformers'
    # tokenizers on the same files (test_tokenizer.py, ~1 s), then MiniLM's real tokenizer vs transformers and the
    # call-argument fuzzing (test_user_input.py)
    "engine/tokenizer.py": ("models", ("tests/test_tokenizer.py", "tests/test_embed.py", "tests/test_user_input.py"),
                            12),
    # (added 2026-11-30, eighth session) a vocab.txt folder's added and special tokens: tiny folders vs transformers'
    # BertTokenizer on the same files (test_wordpiece.py, ~1 s), then the tokenizer tests of every other folder kind
    "engine/wordpiece.py": ("models", ("tests/test_wordpiece.py", "tests/test_tokenizer.py"), 12),
    # T5's bucketed relative position table vs transformers' _relative_position_bucket / compute_bias
    "engine/models/relative_bias.py": ("models", ("tests/test_relative_bias.py", "tests/test_t5.py"), 10),
    # (added 2026-11-30, seventh session) training: the explicit backward formulas and the registered
    # differentiable attention ops vs float64 autograd (test_grad_formulas.py for norm / GELU and the backward ops'
    # opcheck, test_attention_grad_formulas.py for attention, ~3 s each: most mutants die there), the norm / GELU
    # backward kernels and the attention autograd Functions (dq / dk / dv, dropout) vs float64 in the interpreter,
    # then a training step vs transformers
    "engine/ops/grad.py": ("ops", (f"{OPS}/test_grad_formulas.py", f"{OPS}/test_grad.py",
                                   "tests/models/test_training.py"), 16),
    "engine/ops/attention_grad.py": ("ops", (f"{OPS}/test_attention_grad_formulas.py", f"{OPS}/test_grad_formulas.py",
                                             f"{OPS}/test_attention_bwd.py", "tests/models/test_training.py"), 16),
    # torch.compile: the registered custom ops (library.py itself has no mutable expression): their autograd
    # formulas vs float64 autograd and the backward / *_lse ops' opcheck (test_attention_grad_formulas.py and
    # test_grad_formulas.py, ~6 s), then opcheck, fake implementations and eager values of the public ops, then
    # compiled models
    "engine/ops/library_attention.py": ("ops", (f"{OPS}/test_attention_grad_formulas.py",
                                                f"{OPS}/test_grad_formulas.py", f"{OPS}/test_library.py",
                                                "tests/test_compile.py"), 12),
    "engine/ops/library_norm_gelu.py": ("ops", (f"{OPS}/test_grad_formulas.py", f"{OPS}/test_library.py",
                                                "tests/test_compile.py"), 12),
}

# C++ mutants (tests/mutation/cpp_mutants.py) are judged by these.
CPP_TESTS = ("tests/test_sampling.py",)

_AOT = "the AOT build list: checked by tests/kernels/test_aot.py, which compiles every sm_90 configuration (minutes)"
_TUNING = "a tuning table: tile sizes, warps, stages and SM counts change speed, not results (GPU autotuning)"
_CUDA = "CUDA-only (graph capture on a side stream): exercised by the gpu-marked generate test"

SKIP: dict[str, dict[str, str]] = {
    "kernels/gelu.py": {"aot_specs": _AOT, "configs": _AOT},
    "kernels/norm.py": {"aot_specs": _AOT, "configs": _AOT},
    "kernels/attention/fwd.py": {"CONFIGS": _TUNING, "FP32_CONFIGS": _TUNING, "smem_estimate": _AOT,
                                 "_device_smem": _TUNING},
    "kernels/attention/decode.py": { "_H200_SMS": _TUNING, "_COMBINE_WARPS": _TUNING,
                          "_ctas_per_sm": _TUNING, "_sm_count": _CUDA},
    "kernels/attention/bwd.py": {"DKDV_CONFIGS": _TUNING, "DQ_CONFIGS": _TUNING, "FP32_DKDV_CONFIGS": _TUNING,
                                 "FP32_DQ_CONFIGS": _TUNING, "PREPROCESS_BLOCK_M": _TUNING},
}

_SHORTCUT = ("a shortcut taken less often (a stricter or never-true test, or a check done twice) falls through to "
             "the exact general path; only mutants that take it more often can be wrong, and the tests kill those")
_CU = "engine/ops/varlen.py::_validate_cu_lists::"
_PB = "engine/ops/position_bias.py::bias_block::"
_CHECK_STOP = ("how often seq2seq asks 'has every row stopped?' before breaking out of the decode loop "
               "(check_every; speed only, a host sync on CUDA): the result is out[:, :1 + n_new], n_new counts "
               "only steps where some row still ran and stopped rows get pad, so extra steps past the last stop "
               "are cut off; streams check every step and tests/test_t5.py checks they end at the last stop")
_GEN_CHECK = ("how often generate asks 'has every row stopped?' (check_every: CHECK_EVERY only for a CUDA-graph "
              "generate that is not streaming, else 1; a host sync on CUDA, speed only): n_new counts only steps where "
              "some row still ran and stopped rows get pad, so steps run past the last stop are cut off by "
              "out[:, :T + n_new]; streams keep checking every step, and tests/test_decoding.py checks that a stream "
              "(also on the graph path) ends right after the last row's EOS")
_GEN = "engine/generate.py::"
_DEC = "engine/decoding.py::"
_SEED_LAW = ("which seed each decode step hands the sampler: step 0 keeps the call's seed, the steps of a call still "
             "get distinct 64-bit seeds (a hash of another key), and the sampler draws every (seed, row) "
             "from its own generator, so each step's distribution (tests/test_generate.py: vs HF's processors) and "
             "the reproducibility of a seeded call are unchanged; only which of the equally likely tokens a given "
             "seed picks (equivalent in law, not bit for bit: no result can be judged wrong)")
_FWD_K = "kernels/attention/fwd_kernels.py::"  # the forward's jit kernels (split from fwd.py)
_BWD = "kernels/attention/bwd.py::"
_BWD_K = "kernels/attention/bwd_kernels.py::"  # the backward's jit kernels (split from bwd.py)
_UPCAST = ("DOT_UPCAST (the interpreter's bf16 workaround) taken for more calls: 16-bit tiles converted to fp32 before "
           "each dot. fp16 / bf16 values, and P and dS rounded to the input dtype first, are exact in fp32 and in TF32 "
           "(10 mantissa bits), so the dots multiply the same numbers and accumulate in fp32 as before; fp32 inputs "
           "convert to themselves. The same gradients up to summation order; on a GPU, speed only (TF32 instead of "
           "16-bit tensor-core products)")
_PAST_ROWS = ("rows past the end of a query block (rows >= n_q) have q = dO = 0 and m = +inf, so P = exp2(s - inf) = 0 "
              "exactly there and dS = P * (dP - Delta) = 0 * finite = 0 (dP = dO V^T = 0)")
EQUIVALENT: dict[str, str] = {
    "engine/models/blocks.py::check_inputs::bool::t is None or (isinstance(t, torch.Tensor) and t.is_cpu) -> (t is "
    "None and (isinstance(t, torch.Tensor) and t.is_cpu))#0":
        "host is then always False: the values are checked on the model's device after the copy instead of on the "
        "CPU before it; the same min / max, the same errors and the same tensors (on a CPU model the two devices are "
        "one), only a device sync more for CPU inputs of a CUDA model",
    "engine/models/bert.py::hf_name::num::1 -> (0)#0":
        "the part of a buffer name (position_ids / token_type_ids -> \"\", engine recomputes them) becomes 0: every "
        "reader skips an empty name before its part (checkpoint._plan's `elif r.name`, the training test's "
        "`not r.name`), so nothing loads or compares differently",
    "engine/models/t5.py::<module>::bool::False -> (True)#4":
        "lm_head.weight marked an alias (a source used only when no primary one maps to the same engine name): "
        "nothing else maps to lm_head.weight, so checkpoint._plan's plan.setdefault adds it with the same single "
        "source, and with_lm_head ('lm_head.weight' in plan) reads the merged plan: the same module and weights",
    "engine/models/bert.py::hf_name::num::1 -> (2)#0":
        "the part of a buffer name (position_ids / token_type_ids -> \"\") becomes -2: every reader skips an empty "
        "name before its part (checkpoint._plan's `elif r.name`, the training test's `not r.name`)",
    "engine/models/t5.py::hf_name::num::1 -> (2)#9":
        "the parts count of an unused tensor (target \"\": decoder.embed_tokens, the cross-attention's bias table) "
        "becomes 2: every reader skips an empty name before its part and parts (checkpoint._plan, the training test)",
    **{_CU + m: _SHORTCUT for m in (
        "num::2 -> (1)#0", "cmp::cq[1] == total_q <= max_q -> (cq[1] == total_q < max_q)#0",
        "bool::same or len(ck) == 2 and ck[0] == 0 and ck[1] == total_k <= max_k -> (same and (len(ck) == 2 and "
        "ck[0] == 0 and (ck[1] == total_k <= max_k)))#0",
        "cmp::len(ck) == 2 -> (len(ck) != 2)#0",  # cu_seqlens_k has cu_seqlens_q's length (checked before)
        "num::2 -> (1)#1", "num::2 -> (3)#1", "cmp::ck[1] == total_k <= max_k -> (ck[1] == total_k < max_k)#0",
        "num::1 -> (2)#2", "num::2 -> (3)#2")},  # the last two: the loop's [:2] / [:3] of a 2-tuple
    **{_PB + m: "the cached index and the windows are two exact paths to bias_scores' values, and the windows' "
                "fallback is bias_scores itself: moving a case between the three changes no value (" + _SHORTCUT
                + ")" for m in (
        "cmp::0 < n_q * n_k <= CACHED_INDEX_MAX -> (0 < n_q * n_k < CACHED_INDEX_MAX)#0",
        "num::0 -> (1)#0", "cmp::n_q <= 0 -> (n_q < 0)#0", "num::0 -> (1)#1", "cmp::n_k <= 0 -> (n_k < 0)#0",
        "num::0 -> (1)#2", "cmp::lo < 0 -> (lo <= 0)#0", "num::0 -> (1)#3", "arith::length - 1 -> (length + 1)#0",
        "cmp::length - 1 - q_offset + n_k > 2 * length - 1 -> (length - 1 - q_offset + n_k >= 2 * length - 1)#0",
        "num::1 -> (0)#1", "arith::2 * length -> (2 / length)#0", "num::2 -> (1)#1", "num::1 -> (2)#2")},
    "engine/ops/norm.py::_norm::bool::bias is None or (isinstance(bias, _Tensor) and bias.dtype is dtype and "
    "bias.shape == (n,)) -> (bias is None and (isinstance(bias, _Tensor) and bias.dtype is dtype and "
    "(bias.shape == (n,))))#0": _SHORTCUT + " (here the cheap path: the full checks accept the same calls)",
    "engine/ops/norm.py::_add_norm::cmp::0.0 <= eps < _INF -> (0.0 < eps < _INF)#0": _SHORTCUT + " (the cheap path)",
    "engine/ops/decode.py::decode_attention::bool::scale is None or (type(scale) is float and -_INF < scale < _INF) "
    "-> (scale is None and (type(scale) is float and -_INF < scale < _INF))#0": _SHORTCUT + " (the cheap path)",
    _PB + "num::1 -> (2)#1": "length = (2L - 1 + 2) // 2 is still L: the table's width is odd (checked)",
    "kernels/attention/decode.py::_decode_split_kernel::minmax::tl.minimum(lo + run, kv_len) -> (lo + run)#0":
        "hi = min(lo + run, kv_len, shift + last_row + 1) and shift + last_row + 1 <= kv_len - q_len + q_len = kv_len "
        "(last_row <= q_len - 1): the kv_len bound is implied by the causal one",
    # kernels/attention/fwd.py and decode.py, a second sample (2026-11-30, eighth session)
    "kernels/attention/decode.py::_decode_split_kernel::minmax::tl.maximum(kv_len, 0) -> (kv_len)#0":
        "a negative cache length (reachable only with validate=False) stays negative: hi <= kv_len < 0, and lo = "
        "pid_s * run >= 0 when run >= 0, while a negative run gives hi <= lo + run < lo; either way no key tile is "
        "loaded and every row's l_i stays 0 (zeros, lse -inf), as with the clamped length 0",
    **{"kernels/attention/decode.py::_decode_split_kernel::" + ("" if m.startswith("arith::") else "minmax::") + m:
       why + (
        ": hi may pass the block's last visible key (never kv_len). The extra keys are cache keys (loads "
        "masked by cols < hi <= kv_len) that no row of the block sees, hidden by `visible` (cols <= shift + "
        "offs_m): p = exp2(-inf) = 0 exactly, m_i unchanged, alpha 1 (0 on a row that has seen nothing, whose l_i "
        "and acc are 0), so l_i and acc are the same bits and a split of hidden keys only stays empty (zeros, lse "
        "-inf); only speed (the causal tile skipping)")
       for m, why in (
        ("tl.minimum(mb * BLOCK_M + BLOCK_M, q_len) -> (mb * BLOCK_M + BLOCK_M)#0",
         "last_row + 1 grows only on the last query block, where shift + last_row + 1 >= shift + q_len = kv_len"),
        ("tl.minimum(mb * BLOCK_M + BLOCK_M, q_len) -> (tl.maximum(mb * BLOCK_M + BLOCK_M, q_len))#0",
         "last_row = q_len - 1 on every block but the last (unchanged), so shift + last_row + 1 = kv_len"),
        ("tl.minimum(tl.minimum(lo + run, kv_len), shift + last_row + 1) -> (tl.minimum(lo + run, kv_len))#0",
         "the causal bound dropped"),
        ("arith::tl.minimum(mb * BLOCK_M + BLOCK_M, q_len) - 1 -> (tl.minimum(mb * BLOCK_M + BLOCK_M, q_len) + 1)#0",
         "the block's causal bound moves 2 keys later (still capped by kv_len)"))},
    "kernels/attention/decode.py::_decode_combine_kernel::where::tl.where(live, tl.exp2(lse - m_safe), 0.0) -> "
    "(tl.exp2(lse - m_safe))#0":
        "a split that is not live has lse = -inf (it saw no key, or a lane past num_splits, loaded as -inf) and "
        "m_safe is finite (0 while every split so far is empty): exp2(lse - m_safe) = exp2(-inf) = 0 exactly, the "
        "same weight; its partial output is loaded as 0 either way",
    "kernels/attention/decode.py::plan_decode::arith::programs * s / wave -> (programs * s * wave)#0":
        "each efficiency becomes (programs * s * wave) / ceil(programs * s / wave), the original times wave**2 (a "
        "positive constant of the call): the choice, the first s whose efficiency is >= 0.85 x the best, is the "
        "same (up to the rounding of an exact tie)",
    "kernels/attention/decode.py::decode_attention_fwd::cmp::S > 1 -> (S >= 1)#0":
        "with one split the mutant also allocates (or checks) a (B, H, Tq, 1, D) / (B, H, Tq, 1) workspace that no "
        "kernel touches: the split kernel writes out directly (its num_splits > 1 branch is not taken) and the "
        "combine is not launched (S > 1 there); no engine code passes a workspace",
    _FWD_K + "_attn_fwd_kernel::cmp::m0 >= n_q -> (m0 > n_q)#0":
        "the early exit no longer takes a query block that starts exactly at its sequence's length: dense grids "
        "(cdiv(Nq, BLOCK_M) blocks) have none; a varlen sequence shorter than the longest (or empty) runs it with "
        "every row off: q loads masked by row_ok (all False), K/V reads inside the sequence's keys, bias rows "
        "clamped to its last query (an empty one: position n_k - 1, in the table), and every store (out, lse) "
        "masked by row_ok: nothing is written, only work is done",
    _FWD_K + "_attn_fwd_kernel::minmax::tl.maximum(tl.minimum(n_k, m0 + BLOCK_M + causal_shift), "
    "0) -> (tl.minimum(n_k, m0 + BLOCK_M + causal_shift))#0":
        "hi < 0 only where m0 + BLOCK_M + causal_shift < 0 (a varlen block whose rows all precede key 0), where "
        "full_end is 0: the masked stage runs range(0, hi), as empty as range(0, 0)",
    **{_FWD_K + "_attn_fwd_kernel::minmax::tl.minimum(n_k, m0 + BLOCK_M + causal_shift) -> " + m:
        "the masked (BOUNDARY) stage runs on past the block's last visible key (to n_k, or past it): every extra "
        "tile is hidden from every row (cols > offs_m + causal_shift; cols >= n_k with their K/V/mask loads "
        "masked), so p = exp2(-inf) = 0 exactly, m_i unchanged, alpha 1 (0 on rows that saw nothing, whose l_i "
        "and acc are 0): out and lse are the same bits (the extra tiles' unmasked relative-bias loads feed only "
        "these hidden scores); only speed (the causal tile skipping)"
       for m in ("(n_k)#0", "(tl.maximum(n_k, m0 + BLOCK_M + causal_shift))#0")},
    _FWD_K + "_attn_fwd_inner::bool::False -> (True)#0":
        "_attn_fwd_inner's DROPOUT default: both calls (the two stages) pass DROPOUT, so the default is never read",
    _FWD_K + "_attn_fwd_kernel::bool::False -> (True)#0":
        "the kernel's KV_TMA default: _launch passes KV_TMA on every launch (the AOT specs go through _launch too), "
        "so the default is never read",
    _FWD_K + "_attn_fwd_kernel::bool::False -> (True)#1":
        "DOT_UPCAST on by default (every launch but the interpreter's bf16 ones): 16-bit operands are exact in fp32 "
        "and in TF32 (fp16's 10 mantissa bits, bf16's 7), so the upcast dots, run at PRECISION 'tf32' for 16-bit "
        "inputs, take the same products with fp32 accumulation (the interpreter computes both alike); fp32 inputs "
        "are unchanged. Only speed on a GPU (the TF32 rate instead of the 16-bit one)",
    _FWD_K + "_attn_fwd_kernel::bool::False -> (True)#4":
        "DROPOUT on by default for calls without dropout: their dropout_p is the default 0.0, so every score is "
        "kept (tl.rand(...) >= 0.0 always) and l_safe is scaled by 1 - 0.0: the same values; only speed (a Philox "
        "draw per score)",
    _FWD_K + "_attn_fwd_kernel::ifnot::IS_CAUSAL -> (not IS_CAUSAL)#0":
        "which program takes which query block (heaviest first for causal calls, in order otherwise, now the "
        "reverse): both maps cover every block once; only scheduling",
    _FWD_K + "_attn_fwd_kernel::bool::False -> (True)#5":
        "the first stage (keys [0, full_end), seen by every row of the block) runs with BOUNDARY masks: cols < n_k "
        "and (causal) cols <= offs_m + causal_shift hold for all of them, so the masks keep everything and the "
        "general softmax update takes the same values as the hot path (max(qk) * scale = max(qk * scale) for scale "
        "> 0); only speed, and on the GPU at most the contraction of one multiply-add",
    "kernels/attention/decode.py::decode_attention_fwd::bool::B == 0 or H == 0 -> (B == 0 and H == 0)#0":
        "an empty batch or no heads then launches grids with a zero dimension: no program runs (the interpreter; "
        "Triton's launcher skips empty grids), and out (and a split's workspace) has no element to write",
    _FWD_K + "_attn_fwd_kernel::arith::m0 + 1 -> (m0 - 1)#0":
        "the unmasked first stage stops up to 2 keys (rounded down to whole tiles) earlier: [0, full_end) stays a "
        "range every row of the block sees, and the masked second stage takes the rest with exact masks, so the "
        "same keys enter the same online softmax (max(qk) * scale = max(qk * scale) for scale > 0); only speed, "
        "and on the GPU at most the contraction of one multiply-add (the interpreter computes both alike)",
    "engine/ops/decode.py::_decode_torch::dtype::cache_seqlens.to(torch.long) -> (cache_seqlens)#0":
        "int32 lengths are clamped to [0, Tmax] and compared with int64 aranges: torch promotes, nothing overflows",
    **{f"engine/embed.py::pool::eps::1e-9 -> (1.0000000000000001e-07)#{i}":
        "the clamp acts only on a row without real tokens (with a 0/1 mask the count and the weight sum are otherwise "
        ">= 1), whose numerator is a sum of h * 0 = +-0: 0 / 1e-9 and 0 / 1e-7 are the same 0 (finite hidden "
        "states; tests/test_embed.py::test_pool_of_a_row_without_real_tokens_is_sentence_transformers checks it)"
        for i in (0, 1)},
    # engine/embed_spec.py (2026-11-30, sixth session)
    **{f"engine/embed_spec.py::{fn}::num::1 -> (2)#{i}":
        f"for t {what}, t.rsplit('.', 2)[-1] is t.rsplit('.', 1)[-1]: any maxsplit >= 1 leaves the same last "
        "field, the text after the last '.' (all of t when it has none)"
        for fn, i, what in (("read_sentence_transformers", 0, "a modules.json type (the module's class)"),
                            ("_dense_from_config", 1, "a Dense activation_function (a torch.nn class path)"))},
    "engine/atomic.py::_remove_stale::num::1 -> (2)#0":
        "name.split('-', 2)[0] is name.split('-', 1)[0]: the pid is the text before the first '-' either way",
    "engine/checkpoint.py::load_state_dict::num::1 -> (2)#2":
        "count = 1 if parts == [-2] else srcs[0][3]: count is read only when parts != [-1] (the parts check, its "
        "message, want for part >= 0), where both take srcs[0][3]; for a whole tensor (parts == [-1]) it is unused",
    **{k: "load_state_dict returns exactly one tensor per key of expected (= the model's state_dict keys; a missing "
          "source raises before), so strict=True's key checks cannot fail: strict=False changes nothing"
       for k in ("engine/checkpoint.py::from_pretrained::bool::True -> (False)#0",
                 "engine/checkpoint.py::from_transformers::bool::True -> (False)#1")},
    "engine/checkpoint.py::from_transformers::bool::True -> (False)#0":
        "contiguous=False: only a CPU tensor that is a view changes (off the CPU every tensor is made contiguous "
        "anyway), i.e. a GPT-2 Conv1D weight stays a transposed view of the transformers parameter instead of a "
        "contiguous copy: the same values, the layout from_pretrained gives on the CPU (checked against transformers "
        "by tests/test_models.py); trainable still clones every parameter",
    "engine/convert.py::convert.fill::num::2 -> (1)#0":
        "config.json's indentation: every reader parses the JSON (load_config, _engine_output); no value changes",
    **{"engine/seq2seq.py::" + m: _CHECK_STOP for m in (
        "<module>::num::8 -> (7)#0",  # CHECK_EVERY
        "_steps::bool::not ids.is_cuda -> (ids.is_cuda)#0",  # non-streaming only: a stream keeps check_every = 1
        "_steps::arith::step + 1 -> (step - 1)#3",  # (step - 1) % 1 == 0 too: streams still check every step
        "generate::bool::False -> (True)#1")},  # streaming=True in generate: check every step, yields dropped
    "engine/sampling.py::probs_reference::num::1.0 -> (2.0)#4":
        "x / where(greedy, 1.0, temp): the 1.0 only keeps greedy rows (temperature 0) from dividing by 0; their "
        "result is the one-hot of the argmax taken before the division (out = where(greedy, onehot, ...)), and "
        "rows never mix (sort, softmax, cumsum per row): any finite nonzero divisor gives the same output",
    "engine/corpus/store.py::save_json::num::1 -> (2)#0":
        "the manifest's and sidecars' JSON indentation: every reader parses the JSON (read_manifest, finish, "
        "load_embeddings, the tests); no value changes",
    "engine/corpus/job.py::model_sha256::num::20 -> (21)#0":
        "the read size of the model hash (1 MiB -> 2 MiB chunks): sha256 over the same bytes in any chunking is the "
        "same digest",
    "engine/corpus/job.py::_run::bool::True -> (False)#2":
        "st.finish on every rank instead of rank 0 alone: it runs after the gather that follows every rank's shards, "
        "so every rank sums the same sidecars into the same final manifest (rank 0's plan, broadcast) and writes it "
        "by an atomic rename of a per-process temporary: the same file; one process: the same call",
    # engine/backend.py, engine/graphs.py, engine/config.py (2026-11-30; its HF parsing now in engine/hf_config.py)
    "engine/backend.py::<module>::cmp::os.name == \"posix\" -> (os.name != 'posix')#0":
        "_ENV_DATA (os.environ's raw bytes dict) is then None on POSIX too: every read goes through os.environ.get, "
        "the same values as str instead of bytes (both parsers take either; Route caches the same decisions under "
        "str keys): speed only; tests/test_backend.py::test_without_the_raw_environment_os_environ_decides runs "
        "that path",
    "engine/backend.py::Route._miss::num::256 -> (257)#0":
        "the size at which Route's decision cache is cleared (keys are few: environment x device kind x dtype / shape "
        "class): a cleared decision is recomputed by the same rules on its next call; memory only",
    "engine/graphs.py::_fill::cmp::n < dst.shape[1] -> (n <= dst.shape[1])#0":
        "the extra case n == dst.shape[1] (a length that fills its bucket) fills dst[:, n:], an empty slice: nothing "
        "is written",
    "engine/corpus/inputs.py::_csv_records::bool::True -> (False)#1":
        "strict=False for the header reader of a start past the header (read_shard): the header was parsed strictly "
        "by this run's scan (every record from byte 0, hashed), and the csv module's strict mode only adds errors "
        "for malformed input: on input it accepts, both modes give the same cells",
    "engine/graphs.py::EncoderGraphs._run::cmp::Nb > N -> (Nb >= N)#1":
        "the output cut o[:, :N] taken also when Nb == N: then it slices the whole sequence dim, the same tensor, "
        "cloned either way",
    "engine/graphs.py::<module>::num::2 -> (1)#0":
        "WARMUP_CALLS, the eager side-stream calls of a key before its capture (speed only): every call returns the "
        "forward of its own inputs whichever path runs it (test_graph_lifecycle_with_stand_ins_for_cuda, every call "
        "vs eager, for the module's count); the one warm-up left runs every kernel of the key once outside the "
        "capture (compiles, autotuning, cuBLAS set-up happen on first use)",
    "engine/hf_config.py::_from_gpt2::bool::False -> (True)#0":
        "reorder_and_upcast_attn's default: _get's result is discarded (the field is only type-checked when present: "
        "engine's attention always takes the softmax in fp32, what the option asks for), so no default is ever read",
    # engine/hf/_hook.py, engine/hf/attention.py (2026-11-30)
    "engine/hf/_hook.py::_run::num::2 -> (3)#0":
        "the stacklevel of the 'could not register' warning: only the frame the warning is attributed to changes "
        "(2: _run's caller, install or _Loader.exec_module, both in _hook.py; 3: their caller, engine/__init__.py "
        "or importlib's frozen bootstrap); its category, its message and that the import of transformers goes on "
        "are the same",
    "engine/hf/_hook.py::_run::num::2 -> (1)#0":
        "the stacklevel of the 'could not register' warning: stacklevel 1 attributes it to _run's own line, 2 to its "
        "caller (install or _Loader.exec_module); both frames are in engine/hf/_hook.py, so a module-based warnings "
        "filter matches either way; only the line number shown changes (category, message and the import going on "
        "are the same)",
    **{f"engine/hf/attention.py::_eager::dtype::{c}.to(torch.int32) -> ({c})#0":
        "_block_mask reads cu_seq_lens in any integer dtype: its aranges are made in cu's own dtype for searchsorted "
        "(indices, not values, come back) and the positions promote to int64 with the other list (which the other "
        "mutant of the pair still converts). The callers build int32 lists (transformers' padding-free collator, "
        "engine's unpad_input); an int64 list holds the same values: the same mask"
        for c in ("cu_q", "cu_k")},
    **{f"engine/hf/attention.py::_eager::dtype::torch.int32 -> (torch.int64)#{i}":
        "the eager fallback's cu_q (#0) / cu_k (#1) converted to int64 instead of int32 before _block_mask: as for "
        "the dropped conversions above, _block_mask works in the list's own integer dtype (searchsorted returns "
        "indices; the positions promote to int64 with the other list), so the same values give the same mask"
        for i in (0, 1)},
    # engine/cli_embed.py (2026-12-01, ninth session)
    "engine/cli_embed.py::_embed_impl::minmax::(unit @ unit.T).clamp(-1, 1) -> (unit @ unit.T)#0":
        "the printed cosine similarities of L2-normalised float32 rows: without the clamp a value can pass +-1 only "
        "by rounding (a few ulps, ~1e-7), which the 4-decimal format prints as the same 1.0000 / -1.0000",
    **{f"engine/cli_embed.py::_embed_impl::num::1 -> (2)#{i}":
        "a clamp bound of the printed cosines moved to -2 (#1) or 2 (#2): as the clamp removed, the values pass +-1 "
        "only by float32 rounding, which the 4-decimal format prints the same" for i in (1, 2)},
    "engine/cli.py::_generate_impl::num::1.0 -> (2.0)#0":
        "the temperature passed with --temperature 0 (greedy): decoding.decoding_options checks it (> 0 passes) and "
        "then sets temperature 0 for every greedy call, as HF ignores the warpers when not sampling: the same tokens",
    # engine/hf/attention.py (2026-12-01, mutation seed 7)
    "engine/hf/attention.py::_packed::arith::cu[1:] - cu[:-1] -> (cu[1:] + cu[:-1])#0":
        "the derived max_seqlen (only when max_length_q / _k are not given) becomes max(cu[i+1] + cu[i]), never less "
        "than the longest sequence since cu starts at 0 and never decreases; varlen_attention asks only for an int "
        ">= the longest sequence: it sizes the kernel's grid (programs past a sequence's end exit, as they do for "
        "every shorter sequence of a batch) and the PyTorch path does not read it. No bias or dropout reaches this "
        "call (the two places the value is compared). The same output; int32 sums could wrap only past 2**30 tokens",
    "engine/hf/attention.py::attention_mask::dtype::padding[:, kv_offset:kv_offset + kv_length].to(torch.bool) -> "
    "(padding[:, kv_offset:kv_offset + kv_length])#0":
        "transformers calls the mask interface only after _preprocess_mask_arguments, which casts a 2-D attention_mask "
        "to bool (every create_*_mask path), and prepare_padding_mask's F.pad keeps the dtype: padding is bool "
        "already and .to(torch.bool) returns it as is. (A direct call with an int 0/1 mask would return the int "
        "values, which is what sdpa_mask itself returns for one)",
    # engine/ops/grad.py (2026-11-30, seventh session)
    **{f"engine/ops/grad.py::<module>::bool::True -> (False)#{i}":
        "the Route's differentiable flag only matters with grad mode on and a tensor that requires grad (backend rule "
        "3); norm_backward / gelu_backward run only inside backward passes: _Norm / _Gelu.backward are "
        "once_differentiable (run under no_grad), and the registered engine::norm_backward / gelu_backward run from "
        "register_autograd formulas in a backward (grad mode off unless create_graph=True) or in a compiled graph's "
        "backward. Where it could apply (create_graph=True through the registered ops) it only sends the call to "
        "the PyTorch formulas, which test_grad_formulas holds to the same float64 gradients"
        for i in (0, 1)},
    "engine/ops/grad.py::_Norm.forward::bool::False -> (True)#0":
        "materialised grads give the backward zeros instead of None for an unused output: a None dy is replaced by "
        "zeros anyway, and a zero ds adds nothing to dv; only a zero tensor more",
    **{f"engine/ops/grad.py::_Gelu.forward::num::1 -> ({r})#1":
        "the `else 1` is n for a 0-d input, which can only be plain gelu (bias_gelu and gelu_and_mul refuse 0-d "
        "inputs by name): that path flattens x to (1, -1) and views y as x.shape without reading n"
        for r in (0, 2)},
    "engine/ops/grad.py::_Gelu.backward::bool::bias is None or not ctx.needs_input_grad[1] -> (bias is None and "
    "(not ctx.needs_input_grad[1]))#0":
        "with a bias the mutant also sums the bias gradient when the bias needs none; autograd drops a gradient "
        "returned for an input that does not require grad (only the sum's cost); without a bias both return None",
    # engine/ops/attention_grad.py (2026-11-30, seventh session)
    **{f"engine/ops/attention_grad.py::dropout_seed::num::{m}#0":
        "a seed is any number the Philox key takes; [1, 2**62) or [0, 2**61) instead of [0, 2**62) only narrows the "
        "range drawn from (torch.manual_seed still reproduces every mask, calls still differ: "
        "test_attention_grad_formulas)"
        for m in ("0 -> (1)", "62 -> (61)")},
    **{f"engine/ops/attention_grad.py::{f}::bool::False -> (True)#0":
        "with_lse's default is taken only by the inference call (attention.py / varlen.py); the mutant makes the "
        "kernel also store the row statistics, which that caller drops: the same output, one (2, ..., Nq) fp32 "
        "buffer more"
        for f in ("sdpa_forward", "varlen_forward")},
    **{f"engine/ops/attention_grad.py::{f}::num::0 -> (1)#0":
        "a seed is read only with dropout_p > 0, and every caller with dropout passes the forward's seed: the "
        "default seed (sdpa_backward / varlen_backward) and the placeholder without dropout (FlashSDPA / "
        "FlashVarlen.forward) are never read"
        for f in ("sdpa_backward", "varlen_backward", "FlashSDPA.forward", "FlashVarlen.forward")},
    **{f"engine/ops/attention_grad.py::{f}::cmp::dropout_p > 0.0 -> (dropout_p >= 0.0)#0":
        "at dropout_p == 0 the backward kernels run their dropout variant with p = 0: common.dropout_keep is "
        "tl.rand(...) >= 0.0, true for every score (tl.rand lies in [0, 1)), and 1 / (1 - 0) scales by exactly 1, "
        "so the gradients are the same"
        for f in ("sdpa_backward", "varlen_backward")},
    **{f"engine/ops/attention_grad.py::{f}::bool::True -> (False)#0":
        "the forward op's route without needs_backward differs only where no backward kernel exists (fp32 head dim "
        "> 64) for tensors that do not record grad (a compiled graph's): the forward then runs on the kernel, which "
        "covers those sizes, and the backward op (still needs_backward=True) takes the PyTorch formulas, which "
        "recompute from q, k, v and never read lse: the same gradients, an output equal to rounding. The reverse "
        "pairing (a PyTorch forward's placeholder lse read by the backward kernels) is the backward op's flag, "
        "killed by test_registered_forward_and_backward_ops_agree_on_the_path"
        for f in ("sdpa_lse_op", "varlen_lse_op")},
    "engine/ops/attention_grad.py::varlen_backward_op::bool::qe == qs or ke == ks -> (qe == qs and ke == ks)#0":
        _SHORTCUT + " (here: attention_grads_torch of a sequence without queries gives empty dq and zero dk / dv, "
        "of one without keys a (nq, 0) score matrix, so dq = ds @ k = 0: the zeros the buffers start with; "
        "test_varlen_lse_op_grads_on_pytorch has both kinds)",
    **{"engine/ops/attention_grad.py::" + m:
        _SHORTCUT + " (here: varlen_forward / varlen_backward's early return for an empty batch, taken less often, "
        "lets the kernels run on empty q or k: they write zero outputs, the (inf, 0) lse of rows without keys and "
        "zero dk / dv, the shortcut's own values, checked in the interpreter by "
        "test_varlen_kernel_path_with_single_or_no_queries_or_keys, which runs on CUDA where present; on CUDA "
        "Triton 3.9's launcher takes an empty tensor's null data pointer as a valid nullptr and skips a launch "
        "whose grid is empty (backends/nvidia/driver.c); not run on a GPU in this session)"
        for m in ("varlen_forward::bool::total_q == 0 or max_q == 0 or k.shape[0] == 0 -> (total_q == 0 and "
                  "max_q == 0 and (k.shape[0] == 0))#0",
                  "varlen_forward::num::0 -> (1)#2",  # k.shape[1]: the head count, never 0
                  "varlen_backward::bool::q.shape[0] == 0 or k.shape[0] == 0 or max_q == 0 or max_k == 0 -> "
                  "(q.shape[0] == 0 and k.shape[0] == 0 and (max_q == 0) and (max_k == 0))#0",
                  "varlen_backward::num::0 -> (1)#1", "varlen_backward::num::0 -> (1)#3")},  # q / k.shape[1]
    # kernels/attention/bwd.py and common.py (2026-11-30, eighth session)
    **{_BWD_K + f"_attn_bwd_preprocess::dtype::{m}#0":
        "o.to(tl.float32) * do.to(tl.float32) with one conversion dropped: Triton promotes the 16-bit operand of an "
        "fp32 product to fp32, the same conversion" for m in ("o.to(tl.float32) -> (o)", "do.to(tl.float32) -> (do)")},
    **{_BWD_K + m: _UPCAST for m in (
        "_attn_bwd_dkdv_kernel::bool::False -> (True)#0",  # DOT_UPCAST's default (the launcher passes it only
        "_attn_bwd_dq_kernel::bool::False -> (True)#0")},  # for bf16 in the interpreter)
    _BWD + "_launch_bwd::bool::interp and q.dtype == torch.bfloat16 -> (interp or q.dtype == torch.bfloat16)#0":
        _UPCAST,
    _BWD_K + "_bwd_dkdv_inner::num::0.0 -> (1.0)#1":
        "Delta's fill for rows past n_q: " + _PAST_ROWS + " whatever Delta is (1 - 0 or 0 - 0)",
    _BWD_K + "_bwd_dkdv_inner::bool::MASK_PER_ROW and MASK_KIND != 0 -> (MASK_PER_ROW or MASK_KIND != 0)#0":
        "the per-row branch taken also for a key-padding mask (MASK_PER_ROW is never True without a mask: "
        "mask_launch_args): it reads row min(row, n_q - 1) of a mask whose row stride is 0 (or whose one query row is "
        "row 0), i.e. the same key-padding values, added after the product's scaling instead of starting it: the "
        "same scores up to fp32 rounding",
    _BWD_K + "_attn_bwd_dq_kernel::cmp::m0 >= n_q -> (m0 > n_q)#0":
        "a program whose first query is exactly n_q (dense: never; varlen: a sequence of n_q = 0, 32, ... queries "
        "under a longer max_seqlen_q) runs instead of returning: every row has row_ok False, so its store is masked "
        "off and it writes nothing",
    _BWD_K + "_attn_bwd_dkdv_kernel::cmp::n0 >= n_k -> (n0 > n_k)#0":
        "a program whose first key is exactly n_k (dense: never, the grid is cdiv(Nk, BLOCK_N); varlen: a sequence "
        "of n_k = 0, 32, ... keys under a longer max_seqlen_k) runs instead of returning: every key of its block has "
        "col_ok False, so its stores are masked off and it writes nothing",
    _BWD_K + "_attn_bwd_dkdv_kernel::minmax::tl.minimum(m_full, n_q) -> (m_full)#0":
        "the causal stage runs on to m_full past n_q (and the full stage, from m_full, then runs no block): the extra "
        "query blocks are all rows past the end: " + _PAST_ROWS + ", so they add nothing to dK / dV",
    _BWD_K + "_attn_bwd_dq_kernel::ifnot::IS_CAUSAL -> (not IS_CAUSAL)#0":
        "the order of query blocks over program ids (heaviest first for causal calls): start_m = programs - 1 - pid "
        "is a bijection of the blocks, and each program writes only its own rows of dQ",
    _BWD_K + "_attn_bwd_dq_kernel::mask::tl.load(LSE + l_off, mask=row_ok, other=float(\"inf\")) -> "
           "(tl.load(LSE + l_off))#0":
        "m of query rows past n_q read unmasked: they lie in the statistics buffer (the next head's or sequence's "
        "rows, or the start of the log2(l) plane that follows the m plane), and m of a row only reaches that row "
        "of dQ, never stored past n_q (test_backward_loads_stay_inside_every_buffer: the buffer ends at an "
        "unreadable page; the log2(l) and Delta twins of this load are killed there)",
    **{_BWD_K + m: "the boundary stage's end: for a causal call hi_n = max(min(n_k, m0 + BLOCK_M + shift), 0). Without "
                 "the max a negative end leaves range(full_end, hi_n) empty as range(full_end, 0) is (full_end >= 0); "
                 "with n_k instead, the stage runs on over keys no row of the block sees, and its element mask "
                 "(cols <= rows + shift) zeroes P there: the same dQ"
       for m in ("_attn_bwd_dq_kernel::minmax::tl.maximum(tl.minimum(n_k, m0 + BLOCK_M + shift), 0) -> "
                 "(tl.minimum(n_k, m0 + BLOCK_M + shift))#0",
                 "_attn_bwd_dq_kernel::minmax::tl.minimum(n_k, m0 + BLOCK_M + shift) -> (n_k)#0")},
    _BWD + "_launch_bwd::num::0 -> (1)#0":
        "Delta = torch.empty_like(lse[1]) instead of lse[0]: the two planes have the same shape, dtype and layout, and "
        "the preprocess writes every element",
    _BWD + "_launch_bwd::num::0 -> (1)#2":
        "the seed placeholder without dropout: the kernels read seed only under DROPOUT",
    _BWD + "varlen_bwd::num::0 -> (1)#7":
        "N_K = 1 instead of 0 for a packed launch: the kernels read N_Q / N_K only when not IS_VARLEN (_sequence takes "
        "each sequence's lengths from cu_seqlens); the grid and ROWS64 use max_seqlen_k",
    _BWD + "varlen_bwd::bool::False -> (True)#0":
        "mask_per_row=True with mask_kind=0 (varlen has no mask): every use of MASK_PER_ROW in the kernels sits "
        "under MASK_KIND != 0",
    "kernels/attention/common.py::masked_load::bool::USE_A and USE_B -> (USE_A or USE_B)#0":
        "both masks applied where one flag is off: every caller turns a flag off only where its mask is all true "
        "(USE_B = HEAD_DIM != BLOCK_D beside offs_d < HEAD_DIM; USE_A / MASK_ROWS = BOUNDARY beside cols < n_k, false "
        "only on full tiles; mask_bias passes col_ok twice), so mask_a & mask_b is the one mask in use",
    **{f"kernels/attention/common.py::mask_bias::bool::False -> (True)#{i}":
        "mask_bias passes col_ok as both masks: USE_B on loads col_ok & col_ok (BOUNDARY) or col_ok alone, all true on "
        "the full tiles that leave BOUNDARY off: the same mask values" for i in (0, 1)},
    "kernels/attention/common.py::mask_units::dtype::mval.to(tl.float32) -> (mval)#0":
        "an additive mask's fp16 / bf16 values left unconverted: tl.maximum with the fp32 floor and tl.where beside "
        "the fp32 result promote them to fp32 (exactly; -inf stays -inf), so the same fp32 bias comes out",
    "kernels/attention/common.py::dropout_keep::arith::seed + base -> (seed - base)#0":
        "the Philox key of a (batch, head) is seed - (b * H + h) << 32 instead of seed + ...: the forward and both "
        "backward kernels draw through this one function, so they still share every keep mask; keys stay distinct per "
        "head for a seed, and torch.manual_seed still reproduces them. Only which of the equally likely masks a seed "
        "gives changes (equivalent in law, as the decode seeds above: test_attention_bwd's keep rate, per-head / per-row "
        "independence and forward-backward agreement hold for either)",
    **{"kernels/attention/common.py::mask_launch_args::" + m: _SHORTCUT + " (here: MASK_PER_ROW, the per-row mask "
        "path, is the general one; taken for a key-padding mask (row stride 0) or a one-query call it reads the same "
        "mask row for every query)" for m in (
            "bool::strides[2] != 0 and q.shape[2] > 1 -> (strides[2] != 0 or q.shape[2] > 1)#0",
            "num::1 -> (0)#2", "cmp::q.shape[2] > 1 -> (q.shape[2] >= 1)#0")},
    # fwd.rows64_needed: the ROWS64 rule of the forward's and the backward's launchers
    "kernels/attention/fwd.py::rows64_needed::cmp::max(n_q * max(map(abs, q_row_strides)), n_k * max(map(abs, "
    "k_row_strides))) >= 2 ** 31 -> (max(n_q * max(map(abs, q_row_strides)), n_k * max(map(abs, k_row_strides))) > "
    "2 ** 31)#0":
        "ROWS64 off at exactly 2**31: the largest row offset or loop step is (rows - 1) x stride < rows x stride = "
        "2**31, which int32 holds",
    "kernels/attention/fwd.py::rows64_needed::num::31 -> (30)#0":
        "64-bit offsets and loop steps from a row span of 2**30 on instead of 2**31: the 64-bit path is exact for "
        "every size, so the same outputs and gradients (only the spans in [2**30, 2**31) take the slower steps; no "
        "AOT configuration comes near)",
    **{_BWD + f"<module>::num::{m}#{i}":
        "num_warps / num_stages of INTERPRETER_DKDV_CONFIG / INTERPRETER_DQ_CONFIG: _configs picks these only under "
        "Triton's interpreter, which runs each program as whole-tile numpy operations and ignores both"
        for m in ("4 -> (3)", "4 -> (5)", "1 -> (0)", "1 -> (2)") for i in (0, 1)},
    _BWD_K + "_attn_bwd_dkdv_kernel::num::0 -> (1)#5":
        "m_lo = (max(n0 - shift, 1) // BLOCK_M) * BLOCK_M: where n0 - shift <= 0 both give block 0 (1 // BLOCK_M = 0)",
    **{_BWD_K + m: "m_full, where the causal stage (exact element mask) hands over to the unmasked one, moved up or "
                 "kept: without the inner max a negative cdiv loses to m_lo >= 0 in the outer max, as 0 does; "
                 "n0 + BLOCK_N + 1 puts it at most one query block later, which the masked stage then runs with the "
                 "same result (only an earlier start of the unmasked stage can be wrong, and the tests kill those)"
       for m in ("_attn_bwd_dkdv_kernel::minmax::tl.maximum(n0 + BLOCK_N - 1 - shift, 0) -> "
                 "(n0 + BLOCK_N - 1 - shift)#0",
                 "_attn_bwd_dkdv_kernel::arith::n0 + BLOCK_N - 1 -> (n0 + BLOCK_N + 1)#0")},
    # engine/ops/library_norm_gelu.py, library_attention.py (2026-11-30, seventh session)
    **{f"engine/ops/library_norm_gelu.py::_::bool::{m}#{i}":
        "the fake implementations' rms flag only changes what eps=None means in _check_eps (the dtype's epsilon "
        "for RMSNorm); the registered ops' schema has `float eps`, never None, so the checks and errors are the same"
        for m in ("False -> (True)", "True -> (False)") for i in (0, 1)},
    "engine/ops/library_attention.py::_::num::0.0 -> (1.0)#1":
        "scaled_dot_product_attention_lse's fake passes dropout_p only to _check_sdpa's probability check, which "
        "accepts any value in [0, 1] as torch's SDPA does; the shapes do not depend on it",
    # engine/ops/sdpa_args.py (2026-11-30, seventh session: every mutant run)
    **{"engine/ops/sdpa_args.py::_to_4d::" + m:
        "lead4 only pads the broadcast lead to >= 2 dims and to4 only views: more leading 1s, or a reshape of a 4-D "
        "view to its own shape, give the same (B, H, N, D) tensors (test_full_check_brings_every_call_to_matching_"
        "4d_views compares them element for element)" for m in (
            "num::0 -> (1)#0", "arith::2 - len(lead) -> (2 + len(lead))#0", "num::2 -> (1)#3", "num::2 -> (3)#3")},
    "engine/ops/sdpa_args.py::_to_4d.to4::num::2 -> (1)#0":
        "a reshape of the 4-D expanded view to (B, H, N, D), its own shape, is the same view",
    **{"engine/ops/sdpa_args.py::_check_sdpa::" + m: _SHORTCUT + " (a 2-tuple against a 1- or 3-tuple is never "
        "equal: every call takes _to_4d, which gives the same views)" for m in (
            "num::2 -> (1)#4", "num::2 -> (3)#4", "num::2 -> (1)#5", "num::2 -> (3)#5", "num::2 -> (1)#6",
            "num::2 -> (3)#6")},
    **{"engine/ops/sdpa_args.py::_check_sdpa::" + m:
        "the mask of a 4-D call expanded to (B, H, Nq, Nk) and reshaped: a copy with the values of the broadcast "
        "view it replaces" for m in ("cmp::len(lead) > 2 -> (len(lead) >= 2)#0", "num::2 -> (1)#9")},
    **{"engine/ops/sdpa_args.py::_check_sdpa::" + m:
        "a 4-D mask reshaped to (1,) * 0 + its own shape: the same view" for m in (
            "cmp::mask.dim() < 4 -> (mask.dim() <= 4)#0", "num::4 -> (5)#1")},
    # engine/models/relative_bias.py (2026-11-30, sixth session)
    "engine/models/relative_bias.py::relative_position_bucket::dtype::(relative_position > 0).to(torch.long) -> "
    "(relative_position > 0)#0":
        "a bool tensor times a Python int is already int64 (torch's promotion: an integer scalar lifts bool to the "
        "default int64): the same products are added into the int64 buckets",
    "engine/models/relative_bias.py::relative_position_bucket::cmp::relative_position < max_exact -> "
    "(relative_position <= max_exact)#0":
        "at relative_position == max_exact both branches give max_exact: the log branch is max_exact + "
        "trunc(log(1.0) / c * k) = max_exact + 0 (fp32 log(1) is exactly 0), under the num_buckets - 1 cap since "
        "max_exact = num_buckets // 2 >= 1 (config: >= 4 buckets). Only where c = log(max_distance / max_exact) is 0 "
        "(max_distance == max_exact) does the log branch give 0 / 0: there transformers and engine both produce "
        "negative buckets from max_exact on and fail on the embedding lookup; the mutant fails from max_exact + 1",
    # engine/tokenizer.py (2026-11-30, sixth session)
    # engine/wordpiece.py (2026-11-30, eighth session)
    "engine/wordpiece.py::wordpiece_tokenizer::bool::True -> (False)#0":
        "special_tokens_map.json's named tokens built with special False: every named token is set special before it "
        "is added (the loop over named tokens), and AddedToken's special setter derives a normalized flag the file "
        "leaves out as the constructor does (explicit flags are kept): the same token either way",
    **{f"engine/wordpiece.py::wordpiece_tokenizer::bool::False -> (True)#{i}":
       "added_tokens.json's tokens with lstrip / rstrip: BertPreTokenizer drops whitespace anyway, so absorbing the "
       "spaces beside an added token changes no id (only character offsets, which engine does not return)"
       for i in (0, 1)},
    "engine/tokenizer.py::load_tokenizer::cmp::1 <= max_len < 1e9 -> (1 <= max_len <= 1000000000.0)#0":
        "a model_max_length of exactly 1e9 becomes a limit of 10**9 tokens instead of none: truncation at 10**9 "
        "never binds (no input of that length fits a model), and embedding_spec takes min(max_positions, limit), "
        "max_positions either way",
    # engine/generate.py and engine/decoding.py (2026-11-30, seventh session)
    **{_GEN + m: _GEN_CHECK for m in (
        "<module>::num::8 -> (7)#0", "<module>::num::8 -> (9)#0",  # CHECK_EVERY
        "_steps::bool::not graph -> (graph)#0",  # check_every 1 with a graph, CHECK_EVERY for eager generate
        "_steps::arith::step + 1 -> (step - 1)#0", "_steps::num::1 -> (0)#3",  # (step + c) % 1 == 0 for any c
        "_steps::num::1 -> (2)#3",
        "generate::bool::False -> (True)#1")},  # streaming=True inside generate: check every step, yields dropped
    **{_GEN + f"<module>::num::64 -> ({r})#0":
        "CACHE_ALIGN, the rounding of a session's cache length (memory, and which requests share a session): any "
        "length >= T + max_new_tokens holds every position a request writes (the min with n_positions never cuts "
        "below that: _request refuses T + max_new_tokens > n_positions); tests/test_decoding.py checks the rounding "
        "in CACHE_ALIGN's own terms" for r in (63, 65)},
    **{_GEN + m: "the filler of the EOS slots a request does not use only has to match no token id (ids are >= 0): "
                 "-2 matches none, as -1" for m in ("_Session.start::num::1 -> (2)#0", "_steps::num::1 -> (2)#2")},
    **{_GEN + f"_Session.__init__::num::1 -> ({r})#2":
        "the EOS slots' initial filler is never read: start() refills them with -1 (then the request's ids) before "
        "any step compares a token with them" for r in (0, 2)},
    _GEN + "_Session.__init__::bool::True -> (False)#0":
        "pin_memory of the host logits (CUDA models only; None on the CPU): a pageable buffer makes the non_blocking "
        "copy synchronous, and host_choose synchronises the stream before reading it anyway: the same logits",
    _GEN + "_Session.host_choose::bool::True -> (False)#0":
        "non_blocking=False (CUDA models only): a blocking device-to-host copy, then the same stream synchronize: "
        "the same logits reach the sampler",
    _GEN + "_Session._forward::num::1 -> (0)#1":
        "a decode step feeds one token per row, so h is (B, 1, C): h[:, 0] is h[:, -1]",
    _GEN + "_Session.run::num::0 -> (1)#0":
        "the warm-up count's default is read only for a step kind never run: 1 < 2 like 0 < 2, and the count is "
        "stored from its own get(name, 0) + 1: still two warm-ups, then the capture (the orchestration tests count "
        "them)",
    _GEN + "_steps::cmp::torch.arange(T)[None] >= (T - req.lengths.cpu())[:, None] -> (torch.arange(T)[None] > "
           "(T - req.lengths.cpu())[:, None])#0":
        "the one column this moves is each row's first real token, which torch.where then takes from `first`: that "
        "same token",
    **{_GEN + m: "for T == 1 the left-padding check compares two empty slices (always true), so taking it for T == 1 "
                 "(T > 0 is T >= 1) raises nothing new; a one-token mask of 0 is refused by the next check either way"
       for m in ("_request::cmp::T > 1 -> (T >= 1)#0", "_request::num::1 -> (0)#1")},
    **{m: _SEED_LAW for m in (  # the hash's key: the seed in 9 bytes, the step in 7 (steps < 2**56) or 9
        _DEC + "step_seed::num::8 -> (9)#0", _DEC + "step_seed::num::8 -> (7)#1", _DEC + "step_seed::num::8 -> (9)#1")},
    **{_DEC + m: "seed=None: the seed drawn from torch's default generator spans [1, 2**63 - 1) or [0, 2**63 - 2) "
                 "instead of [0, 2**63 - 1): still a fresh 63-bit seed per call that torch.manual_seed repeats (what "
                 "is documented, checked by tests/test_decoding.py); only which seed is drawn (as with the step "
                 "seeds: no result can be judged wrong)"
       for m in ("decoding_options::num::0 -> (1)#6", "decoding_options::num::1 -> (2)#2")},
}

GPU_ONLY: dict[str, str] = {
    "kernels/attention/common.py::use_kv_tma::cmp::k.device.type != \"cuda\" -> (k.device.type == 'cuda')#0":
        "the interpreter returns False before this test (interpreting()); on CUDA the pointer path is taken everywhere "
        "(the same values, no TMA): tests/ops/test_attention.py::test_gpu_kv_path_follows_the_device",
    "kernels/attention/common.py::use_kv_tma::bool::_capability(index)[0] >= 9 and tma_addressable(k) and "
    "tma_addressable(v) -> (_capability(index)[0] >= 9 or tma_addressable(k) or tma_addressable(v))#0":
        "the interpreter returns False first; on CUDA, TMA for tensors it cannot address (or before sm_90): "
        "tests/ops/test_attention.py::test_gpu_kv_path_follows_the_device (its misaligned view)",
    "kernels/gelu.py::_gelu_kernel::dtype::pid_n.to(tl.int64) -> (pid_n)#0":
        "the flat row's column start passes 2**31 only past 2**31 elements (4 GiB, minutes in the interpreter): "
        "tests/ops/test_activation.py::test_gelu_past_2_31_elements_on_gpu",
    "kernels/gelu.py::_gelu_kernel::dtype::tl.int64 -> (tl.int32)#1":
        "the same 64-bit column start (above): tests/ops/test_activation.py::test_gelu_past_2_31_elements_on_gpu",
    "engine/seq2seq.py::_steps::bool::streaming or not ids.is_cuda -> (streaming and (not ids.is_cuda))#0":
        "on the CPU the same check_every (streaming: 1; generate: every 8 steps, results unchanged); only a CUDA "
        "stream checks every 8 steps and yields pad-only steps after the last stop: "
        "tests/test_t5.py::test_cuda_fp32_matches_transformers (streams to an EOS stop on CUDA)",
    "engine/kv_cache.py::StaticKVCache.attend::bool::False -> (True)#0":
        "decode_attention's validate=False -> True reads the lengths on the host: on the CPU the same answer (the "
        "lengths are in range), on CUDA a sync every step that breaks graph capture: "
        "tests/test_sessions.py::test_threads_and_interleaved_streams_with_cuda_graphs",
}

KILLED_ELSEWHERE: dict[str, str] = {
    "kernels/attention/fwd.py::rows64_needed::num::2 -> (1)#0":
        "1 ** 31 = 1: ROWS64 for every call (the backward's launcher takes the rule too), the same gradients in the "
        "interpreter; compiled, the 64-bit loop steps spill and serialize wgmma: "
        "tests/kernels/test_sm90_gate.py::test_no_spills_and_no_serialized_wgmma[attention_bwd] fails on that "
        "code (checked once, before the flag existed, with the steps unconditionally 64-bit: 13 failures, "
        "e.g. 1168 B of spills in attnbwd_bf16_d256's dK/dV, C7515 in the D=64 / 128 dQ builds)",
    _FWD_K + "_attn_fwd_kernel::arith::(full_end // BLOCK_N) * BLOCK_N -> (full_end // BLOCK_N / "
    "BLOCK_N)#0":
        "full_end becomes a float: the interpreter's range takes it, Triton's compiler rejects it ('For loop bounds "
        "and step must all be ints'); tests/kernels/test_aot.py[attention] fails on it (checked once, eighth "
        "session: `python -m engine.kernels.aot attention -k d64` on the mutated copy, 22 of 22 builds fail, 4 s; "
        "the clean tree builds them)",
    "kernels/attention/common.py::bias_args::bool::False -> (True)#0":
        "the decode launcher (which passes no shifted=) then gets the shifted table: in the interpreter it reads copy 0, "
        "the table itself, and Triton's interpreter ignores the extra stride_bs keyword; compiled, Triton refuses it "
        "(KeyError 'Keyword argument stride_bs was specified but unrecognised'): tests/kernels/test_aot.py::"
        "test_every_configuration_compiles_for_sm90[decode] fails (checked once: `python -m engine.kernels.aot decode "
        "-k bias` on the mutant, 10 s), as would every CUDA decode call with a bias",
    _BWD + "_configs::ifnot::interpreting() -> (not interpreting())#0":
        "in the interpreter the GPU tables' tiles (the same gradients, slower); on a GPU the interpreter's small tiles "
        "(BLOCK 16 / 32 rows: mma.sync, no wgmma): tests/kernels/test_sm90_gate.py::test_attention_backward_uses_"
        "wgmma fails on it (checked once: `python -m engine.kernels.aot attention_bwd -k bf16_d64_causal_kv` on the "
        "mutant builds 0 HGMMA, 48 / 40 HMMA in dK/dV / dQ; 10 s)",
    _BWD + "_configs::cmp::dtype == torch.float32 -> (dtype != torch.float32)#0":
        "reached only outside the interpreter: 16-bit calls then look up the fp32 tables, which stop at head dim 64, "
        "so bf16 at D=128 / 256 raises KeyError: the AOT spec listing fails "
        "(tests/kernels/test_aot.py::test_every_configuration_compiles_for_sm90[attention_bwd]; checked once with "
        "`python -m engine.kernels.aot attention_bwd -k d128_causal_kv`, 5 s), as does "
        "tests/ops/test_attention_bwd.py::test_sdpa_grads_gpu_real_sizes[128] on a GPU",
    "engine/models/blocks.py::refuse_compiled_packing::ifnot::packed -> (not packed)#0":
        "called only under torch.compile: tests/test_compile.py (85 s clean) fails on it "
        "(test_fullgraph_equals_eager[BertForMaskedLM], checked once, 19 s)",
    "engine/models/bert.py::EncoderModel.encode::bool::False -> (True)#0":
        "taken only under torch.compile: tests/test_compile.py (85 s clean) fails on it "
        "(test_fullgraph_equals_eager[BertForMaskedLM]: packing a padded batch is data dependent; checked once, 7 s)",
    "engine/models/blocks.py::check_inputs::num::1 -> (2)#4":
        "the compiled value check (names[1:] -> names[2:]): taken only under torch.compile; tests/test_compile.py "
        "fails on it (test_compiled_model_checks_input_values, checked once, 7 s)",
    "kernels/norm.py::_norm_fwd_kernel::dtype::tl.float32 -> (tl.float16)#5":
        "m2 starts fp16 and becomes fp32 in the loop: the interpreter promotes silently, Triton's compiler rejects "
        "the loop-carried type change; tests/kernels/test_aot.py[norm] fails on it (checked once, 139 s, as "
        "kernels/layernorm.py before the norm kernels merged)",
}
