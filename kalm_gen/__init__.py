"""Grounding a Hugging Face causal LM in CLEVR-Robot and imagining rollouts for novel goals.

- :mod:`kalm_gen.base_model`: the base LM by path (default: the embedded SmolLM2, converted once
  from GGUF to a safetensors cache); never downloads.
- :mod:`kalm_gen.sequences`, :mod:`kalm_gen.grounded_lm`: the mixed text/trajectory layout and the
  LM with state/action encoders and heads (LoRA or full fine-tuning).
- :mod:`kalm_gen.push_models`, :mod:`kalm_gen.explain_head`, :mod:`kalm_gen.action_fit`: heads that
  read the states as well as (or instead of) the LM, and fitting them alone.
- :mod:`kalm_gen.grounding_data`, :mod:`kalm_gen.train`: grounding tasks and training
  (``kalm ground``, accelerate, checkpoints, resume).
- :mod:`kalm_gen.imagine`, :mod:`kalm_gen.imagine_dataset`, :mod:`kalm_gen.quality`: imagined
  rollouts (``kalm imagine``) and their quality (``kalm imagine-eval``).
"""
