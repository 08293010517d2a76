"""Host-side data: chat JSONL files, the chat tokenizer, tokenising, batching, the KL mix, FineWeb.

Numpy only (no JAX), so every stage can use it. Modules:
  conversations   read / validate / write upstream chat JSONL; the shipped samples
  chat_tokenizer  chat templates and assistant-token masks (`ChatTokenizer`)
  tokenize        SFT rows, plain-text rows, `pad_batch` and its shift convention
  batching        deterministic, resumable `Batcher`
  mixtures        the KL set drawn from several files; data specs ("sample:NAME", paths)
  fineweb         FineWeb documents for the pre-training-significance metric
  locations       where the data emjax does not ship lives ($EMJAX_DATA, the user cache)
  upstream_pins   the sha256 digests of upstream's files
  fetch           `emjax data`: fetch and check them, and a FineWeb sample (docs/data.md)
"""
