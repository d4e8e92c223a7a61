"""Embed a whole corpus: token-budget batches, resumable sharded output, torch.distributed ranks.

    from engine.corpus import embed_corpus, load_embeddings
    result = embed_corpus("path/to/model", "corpus.txt", "out_dir")        # or under torchrun, same call
    vectors, ids = load_embeddings("out_dir")                             # (rows, dim), (rows,) record numbers

``python -m engine embed MODEL --input FILE --output OUT`` is the command-line form. inputs.py reads the
formats (and documents what happens to bad input), store.py owns the output directory, job.py runs the job.
"""
from engine.corpus.inputs import InputError
from engine.corpus.job import DEFAULT_SHARD_SIZE, CorpusResult, embed_corpus
from engine.corpus.store import OutputError, load_embeddings

__all__ = ["DEFAULT_SHARD_SIZE", "CorpusResult", "InputError", "OutputError", "embed_corpus", "load_embeddings"]
