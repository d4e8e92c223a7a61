"""Type stub of engine._sampler (csrc/sampler.cpp). Use engine.sampling; this raw interface takes pointers."""

STATUS: tuple[str, ...]
"""Names of run()'s status codes: STATUS[0] == "ok", then the option or the logits problem a row failed on."""

def run(
    logits: int,
    dtype: int,
    B: int,
    V: int,
    stride_b: int,
    stride_v: int,
    temperature: float,
    temperature_ptr: int,
    top_k: int,
    top_k_ptr: int,
    top_p: float,
    top_p_ptr: int,
    min_p: float,
    min_p_ptr: int,
    repetition_penalty: float,
    repetition_penalty_ptr: int,
    prev: int,
    prev_offsets: int,
    prev_T: int,
    prev_stride_b: int,
    prev_stride_t: int,
    probs_out: int,
    ids_out: int,
    seed: int,
    num_threads: int,
) -> tuple[int, int, float]:
    """Process B rows of (B, V) logits at address `logits` (dtype 0 float32, 1 float16, 2 bfloat16; strides in
    elements). Each option is a scalar, or (when its *_ptr is not 0) B contiguous float64 (int64 for top_k) values.
    prev: int64 ids, (B, prev_T) with strides, or flat with B + 1 int64 offsets at prev_offsets; 0 for none.
    Writes float32 (B, V) probabilities to probs_out or B int64 ids to ids_out (exactly one is non-zero).
    Releases the GIL; num_threads 0 picks a thread count by size. Returns (status, row, value): (0, -1, 0.0) when
    every row is fine, else the first bad row, its STATUS code and the offending value.
    """
