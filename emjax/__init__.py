"""emjax: emergent vs narrow misalignment experiments in JAX.

Main entry points:
  emjax.load.load_model          weights + config + chat tokenizer from any source
  emjax.model                    the pure-function decoder (embed / run_layers / unembed / forward)
  emjax.interventions            LoRA and steering-vector pytrees
  emjax.train                    SFT + KL training of an intervention
  emjax.sampling.generate        KV-cache sampling
"""

__version__ = "0.1.0"
